"""Farthest-point sampling: a diversity baseline, in torch so that it scales to large pools."""

from __future__ import annotations

import numbers

import numpy as np

from oed._torch import CHUNK, as_tensor, resolve_device
from oed.errors import InputError
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import greedy_select
from oed.selectors._lazy import MAX_LAZY_FPS_PICKS, lazy_fps, use_lazy


def _squared_norms(X, chunk: int = CHUNK):
    """Row norms ‖x_i‖², shape (n,), without an (n, d) temporary."""
    import torch

    return torch.cat([(X[s : s + chunk] ** 2).sum(dim=1) for s in range(0, len(X), chunk)])


def _min_squared_distance_to(X, norms, Y, chunk: int = CHUNK):
    """min_j ‖x_i − y_j‖² for every pool row i, shape (n,), chunked over pool and ``Y``."""
    import torch

    ynorms = _squared_norms(Y, chunk)
    out = torch.full((len(X),), torch.inf, dtype=X.dtype, device=X.device)
    for s in range(0, len(X), chunk):
        xs = X[s : s + chunk]
        for t in range(0, len(Y), chunk):
            d2 = norms[s : s + chunk, None] + ynorms[None, t : t + chunk] - 2.0 * xs @ Y[t : t + chunk].T
            out[s : s + chunk] = torch.minimum(out[s : s + chunk], d2.min(dim=1).values)
    return out


class _FPSHooks:
    """Greedy hooks of FPS: the state is the squared distance of every pool row to the selected set."""

    def __init__(self, X, X_train) -> None:
        self.X, self.X_train = X, X_train  # torch (n, d) and (m, d) or None, same device
        self.n_candidates, self.device = len(X), X.device

    def start(self) -> None:
        import torch

        self.norms = _squared_norms(self.X)
        if self.X_train is None:  # nothing selected yet: every row infinitely far
            self.d2 = torch.full((len(self.X),), torch.inf, dtype=self.X.dtype, device=self.device)
        else:
            self.d2 = _min_squared_distance_to(self.X, self.norms, self.X_train)

    def score(self):
        return self.d2

    def update(self, j: int) -> None:
        import torch

        # same formula as skmatter: ‖x‖² + ‖x_j‖² − 2 x·x_j
        new_d2 = self.norms + self.norms[j] - 2.0 * (self.X @ self.X[j])
        torch.minimum(self.d2, new_d2, out=self.d2)


class FarthestPointSampling(SelectorBase):
    """Greedy farthest-point sampling (FPS) in Euclidean feature space.

    Each step picks the pool row farthest from everything selected so far
    (largest Hausdorff distance min_{s∈S} ‖x − x_s‖, ties to the lowest index),
    then lowers every pool row's distance to the set by its distance to the new
    pick. This is Gonzalez's 2-approximation of the k-centre problem and the
    FPS of Imbalzano et al.; the picks are those of
    ``skmatter.sample_selection.FPS`` started from the same point (same squared
    distance formula ‖x‖² + ‖y‖² − 2x·y, same argmax). It is oed's own torch
    implementation so that a pool of 1e5 × 2000 features runs on a GPU: the
    state is one distance per pool row; each step costs one chunked
    matrix–vector product. The loop is oed's greedy driver
    (:func:`oed.selectors._greedy.greedy_select`).

    Parameters
    ----------
    n_to_select : int
        Number of pool rows to pick (truncated, with a warning, to the pool size).
    initialize : int or "random", default 0
        Index of the first pick, or a uniformly random one (``random_state``).
        Ignored when ``X_train`` is given: the training rows then act as the
        already-selected set and the first pick is the pool row farthest from them.
    random_state : int, numpy.random.Generator or None, default None
        Used only by ``initialize="random"``.
    device : str, default "auto"
        Torch device; "auto" uses a GPU when present. Arithmetic is float64.
    lazy : bool or "auto", default "auto"
        Lazy greedy (Minoux 1978; :mod:`oed.selectors._lazy`): a row's distance to the set only
        falls, so an old distance bounds the new one and only the row on top of a max-heap is
        updated until it is current — the same picks without a pass over the pool per pick.
        "auto": lazy on the CPU (where a pass is memory-bound), plain passes on a GPU. Beyond
        :data:`~oed.selectors._lazy.MAX_LAZY_FPS_PICKS` picks (5000) always plain: lazy FPS keeps
        the (k, k) pick-to-pick distances.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order, distinct.
    gains_ : ndarray of float, shape (n_selected_,)
        Hausdorff distance of each pick to the set before it (training rows and
        earlier picks), in feature units (not squared); non-increasing. The
        first entry is ``inf`` when there is no training set (the start point
        has no set to be far from), as skmatter's ``hausdorff_at_select_``.
    n_selected_ : int
    hausdorff_ : ndarray of float, shape (n_candidates,)
        Final distance of every pool row to training rows ∪ picks (0 for picks).
    n_rescored_ : int
        With ``lazy``: rows whose distance was brought up to date (plain FPS: n per pick).

    Raises
    ------
    InputError
        From :meth:`fit`: bad shapes or values, an empty pool, a bad
        ``initialize`` or ``n_to_select``.

    References
    ----------
    T. F. Gonzalez, Theor. Comput. Sci. 38, 293 (1985), doi:10.1016/0304-3975(85)90224-5;
    G. Imbalzano et al., J. Chem. Phys. 148, 241730 (2018), doi:10.1063/1.5024611;
    scikit-matter, ``skmatter.sample_selection.FPS`` (the reference implementation).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.1, 0.1]])
    >>> FarthestPointSampling(3, device="cpu").fit(X).selected_idx_.tolist()
    [0, 2, 1]
    """

    uses_random_state = True
    gains_unit = "feature distance"

    def __init__(self, n_to_select: int, *, initialize=0, random_state=None, device: str = "auto",
                 lazy="auto") -> None:
        self.n_to_select = n_to_select
        self.initialize = initialize
        self.random_state = random_state
        self.device = device
        self.lazy = lazy

    def _start(self, n: int) -> int:
        init = self.initialize
        if isinstance(init, str) and init == "random":
            return int(np.random.default_rng(self.random_state).integers(n))
        if isinstance(init, numbers.Integral) and not isinstance(init, bool):
            if not 0 <= init < n:
                raise InputError(f"initialize={init} is not a pool index (pool size {n})")
            return int(init)
        raise InputError(f"initialize must be a pool index or 'random', got {init!r}")

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> FarthestPointSampling:
        """Select from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Structure features (for DesignBlocks, the energy rows).
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Already labelled structures, treated as already selected.
        y_train : ignored
            Label-free: distances do not depend on labels.
        X_target : None
            Not used (``uses_target`` is False): passing one raises InputError.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad shapes, non-finite values, an empty pool, a bad ``initialize``,
            a non-positive ``n_to_select`` or an ``X_target``.
        """
        X, X_train, k = self._validate(X, X_train, X_target)
        dev = resolve_device(self.device)
        start = self._start(len(X)) if X_train is None or len(X_train) == 0 else None
        if use_lazy(self.lazy, dev, k, MAX_LAZY_FPS_PICKS):
            picks, dist, d2, self.n_rescored_ = lazy_fps(np.asarray(X, dtype=float), X_train, k, start)
            gains = np.sign(dist) * dist**2  # back to squared distances, as the plain hooks give
        else:
            hooks = _FPSHooks(as_tensor(X, dev), None if start is not None else as_tensor(X_train, dev))
            picks, gains = greedy_select(hooks, k, first=start)
            d2 = hooks.d2.cpu().numpy()
        self._set_selection(picks, np.sqrt(np.clip(gains, 0.0, None)))
        self.hausdorff_ = np.sqrt(np.clip(d2, 0.0, None))
        return self
