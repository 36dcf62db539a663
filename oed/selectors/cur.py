"""CUR sample selection (scikit-matter), continued from a training set by projection."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from oed.errors import InputError
from oed.selectors._base import SelectorBase


def _recording_cur(**params):
    """A ``skmatter.sample_selection.CUR`` that records the importance score π of each pick.

    skmatter keeps only the current π; this subclass stores π[j] at the moment
    ``j`` is selected (the greedy loop calls ``_update_post_selection`` right
    after choosing ``j`` as the argmax of π, before π is recomputed).
    """
    from skmatter.sample_selection import CUR

    class _RecordingCUR(CUR):
        def _init_greedy_search(self, X, y, n_to_select):
            self.pi_at_select_ = []
            super()._init_greedy_search(X, y, n_to_select)

        def _update_post_selection(self, X, y, last_selected):
            self.pi_at_select_.append(float(self.pi_[last_selected]))
            super()._update_post_selection(X, y, last_selected)

    return _RecordingCUR(**params)


def project_out_rows(X: np.ndarray, rows: np.ndarray, *, rtol: float = 1e-12) -> np.ndarray:
    """Remove from every row of ``X`` its component in the span of ``rows``.

    Parameters
    ----------
    X : ndarray, shape (n, d)
    rows : ndarray, shape (m, d)
    rtol : float
        Singular values of ``rows`` below ``rtol × largest`` are treated as zero.

    Returns
    -------
    ndarray, shape (n, d)
        X (I − Q Qᵀ), Q an orthonormal basis (d, r) of the row space of ``rows``.
        This is what CUR's own Gram–Schmidt step would leave after selecting
        every row of ``rows`` in turn.
    """
    if len(rows) == 0:
        return X.copy()
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return X.copy()
    Q = vt[s > rtol * s[0]].T
    return X - (X @ Q) @ Q.T


class CURSelector(SelectorBase):
    """Greedy CUR sample selection by leverage (importance) scores.

    Each step computes the top ``n_components`` left singular vectors U of the
    current pool matrix, scores every row by its leverage π_i = Σ_c U_ic², picks
    the largest, and (with ``recompute_every > 0``) removes the picked row's
    direction from every pool row before the next step (Gram–Schmidt), so later
    picks bring new directions. The selection itself is
    ``skmatter.sample_selection.CUR`` (Imbalzano et al. 2018) unchanged.

    With ``X_train``, the pool is first orthogonalised against the training
    rows: every pool row loses its component in their span
    (:func:`project_out_rows`), which is exactly where CUR's own sequential
    orthogonalisation would stand had it selected the training rows first. The
    picks therefore complement the training set: a pool row that the training
    set already spans has no residual and no leverage. If the training rows
    span the whole pool (residual ≈ 0), the picks carry no information and a
    warning says so.

    Parameters
    ----------
    n_to_select : int
        Number of pool rows to pick (truncated, with a warning, to the pool size).
    recompute_every : int, default 1
        Recompute π every this many picks; 0 ranks once by the initial leverage
        scores without any orthogonalisation (skmatter's meaning).
    n_components : int, default 1
        Number of singular vectors in π (skmatter's ``k``); must be smaller than
        both the pool size and the feature count.
    tolerance : float, default 1e-12
        Rows of norm below this are not used to orthogonalise (skmatter's ``tolerance``).

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order, distinct.
    gains_ : ndarray of float, shape (n_selected_,)
        Importance score π of each pick when it was selected (dimensionless,
        in [0, 1]; π sums to ``n_components`` over the pool at every
        recomputation). Not monotone in general.
    n_selected_ : int

    Raises
    ------
    InputError
        From :meth:`fit`: bad shapes or values, an empty pool, bad parameters.

    Notes
    -----
    Deterministic: skmatter's sparse SVD starts from a fixed vector
    (``random_state=0``); π uses squared singular vectors so their sign does
    not matter. Each step is a sparse SVD of the (n, d) pool: cost grows as
    k · n · d.

    References
    ----------
    M. W. Mahoney & P. Drineas, PNAS 106, 697 (2009), doi:10.1073/pnas.0803205106;
    G. Imbalzano et al., J. Chem. Phys. 148, 241730 (2018), doi:10.1063/1.5024611;
    scikit-matter, ``skmatter.sample_selection.CUR``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [2.9, 0.1, 0.0]])
    >>> CURSelector(2).fit(X).selected_idx_.tolist()
    [0, 1]
    """

    gains_unit = "leverage"

    def __init__(self, n_to_select: int, *, recompute_every: int = 1, n_components: int = 1,
                 tolerance: float = 1e-12) -> None:
        self.n_to_select = n_to_select
        self.recompute_every = recompute_every
        self.n_components = n_components
        self.tolerance = tolerance

    def _check_params(self, n: int, d: int) -> None:
        for name in ("recompute_every", "n_components"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (0 if name == "recompute_every" else 1):
                raise InputError(f"{name} must be a {'non-negative' if name == 'recompute_every' else 'positive'} "
                                 f"integer, got {v!r}")
        if n > 1 and self.n_components >= min(n, max(d, 2)):
            raise InputError(f"n_components={self.n_components} must be smaller than the pool size ({n}) "
                             f"and the feature count ({d})")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
            raise InputError(f"tolerance must be a non-negative number, got {tol!r}")

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> CURSelector:
        """Select from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Structure features (for DesignBlocks, the energy rows).
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Already labelled structures; their span is projected out of the pool first.
        y_train : ignored
            Label-free.
        X_target : None
            Not used (``uses_target`` is False): passing one raises InputError.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad shapes, non-finite values, an empty pool, bad parameters, an ``X_target``.
        """
        X, X_train, k = self._validate(X, X_train, X_target)
        n, d = X.shape
        self._check_params(n, d)
        work = X if X_train is None else project_out_rows(X, X_train)
        if X_train is not None and np.linalg.norm(work) <= 1e-10 * max(np.linalg.norm(X), 1e-300):
            warnings.warn("the training rows span the whole pool: CUR picks carry no new directions",
                          stacklevel=2)
        if n == 1:  # skmatter needs two samples; a single row is its own selection
            picks, gains = np.array([0]), np.array([1.0])
        else:
            if d == 1:  # skmatter needs two features; a zero column changes no SVD or projection
                work = np.hstack([work, np.zeros((n, 1))])
            cur = _recording_cur(n_to_select=k, recompute_every=self.recompute_every, k=self.n_components,
                                 tolerance=self.tolerance, random_state=0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cur.fit(work)
            exhausted = any("Column vector contains only zeros" in str(w.message) for w in caught)
            for w in caught:
                if "Column vector contains only zeros" not in str(w.message):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if exhausted:
                warnings.warn("the pool's (residual) rank is exhausted: later CUR picks carry no new "
                              "directions and their order is arbitrary", stacklevel=2)
            picks = np.asarray(cur.selected_idx_, dtype=np.int64)
            gains = np.asarray(cur.pi_at_select_[: len(picks)], dtype=float)
        self._set_selection(picks, gains)
        return self
