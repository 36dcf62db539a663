"""D-optimal selection: maximum log det of the information matrix (greedy + Fedorov exchange)."""

from __future__ import annotations

import numpy as np

from oed._torch import resolve_device
from oed.information import DEFAULT_PRIOR_PRECISION
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import check_reg, run_greedy
from oed.selectors._lazy import LazyDOptimal, lazy_greedy, use_lazy


def log_det_gain(state):
    """Score: information gain ½ log det(I + J_c Σ J_cᵀ) of each candidate, nats, (n,)."""
    return state.log_det_gain()


class GreedyDOptimal(SelectorBase):
    """Greedy D-optimal design with Fedorov exchange.

    Each step picks the candidate whose design block J (energy row, plus 3N
    force rows when X is a :class:`~oed.information.DesignBlocks` with forces)
    has the largest information gain ½ log det(I + J Σ Jᵀ) given the training
    set and earlier picks, then updates Σ by a block Woodbury update. For the
    linear-Gaussian model this is the expected information gain about the
    parameters (Chaloner & Verdinelli, Stat. Sci. 10, 273 (1995);
    docs/design.md §2); log det is monotone submodular, so greedy is within
    (1 − 1/e) of optimal. Exchange passes then swap design points for
    candidates while log det improves (never worsens it), and the final design
    is ordered greedily within itself. Deterministic: ties go to the lowest
    index. The loop is oed's greedy driver
    (:func:`oed.selectors._greedy.greedy_select`) on
    :class:`oed.engine.InformationState`.

    Parameters
    ----------
    n_to_select : int
        Number of configurations to pick (truncated, with a warning, to the pool).
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
        Prior precision λ, relative to unit label noise.
    exchange : bool, default True
        Run Fedorov exchange passes after greedy selection.
    device : str, default "auto"
        Torch device; "auto" uses a GPU when present.
    lazy : bool or "auto", default "auto"
        Without exchange, on energy rows: lazy greedy (Minoux 1978; :mod:`oed.selectors._lazy`).
        Gains only fall as picks are added (submodularity), so an old gain bounds the new one and
        only the candidate on top of a max-heap is rescored until it is current — the same picks
        as plain greedy, each rescore an (m, d) product with m the rows selected, instead of an
        (n, d) pass per pick. "auto": on the CPU when training rows + picks ≤ features.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order.
    gains_ : ndarray, shape (n_selected_,)
        Information gain of each pick in nats, non-increasing; twice their sum
        is the increase of log det Λ.
    n_selected_ : int
    n_swaps_ : int
        Exchanges made after greedy.
    log_det_ : float
        log det Λ of training set plus picks, nats.
    n_rescored_ : int
        With the lazy greedy only: candidates rescored (plain greedy: n per pick).

    References
    ----------
    Fedorov, "Theory of Optimal Experiments" (Academic Press, 1972);
    Nemhauser, Wolsey & Fisher, Math. Program. 14, 265 (1978), doi:10.1007/BF01588971.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    >>> sel = GreedyDOptimal(2, device="cpu").fit(X)
    >>> sel.selected_idx_.tolist(), sel.gains_unit
    ([0, 2], 'nats')
    """

    uses_prior_precision = True
    gains_unit = "nats"

    def __init__(self, n_to_select: int, *, reg: float = DEFAULT_PRIOR_PRECISION, exchange: bool = True,
                 device: str = "auto", lazy="auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.exchange = exchange
        self.device = device
        self.lazy = lazy

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> GreedyDOptimal:
        """Select from the pool.

        Parameters
        ----------
        X : array (n_candidates, n_features) or DesignBlocks
            Candidate features or design blocks.
        X_train : array (n_train, n_features) or DesignBlocks, optional
            Already labelled; the picks add information on top of them.
        y_train : ignored
            Label-free: the information matrix does not depend on the labels.
        X_target : None
            Not used (``uses_target`` is False): passing one raises InputError.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad shapes, non-finite values, an empty pool, ``reg <= 0``, a
            non-positive ``n_to_select`` or an ``X_target``.
        """
        X, X_train, k = self._validate(X, X_train, X_target, blocks=True)
        reg = check_reg(self.reg)
        m0 = 0 if X_train is None else len(X_train.rows)
        # lazy: greedy only, one row per candidate, and a Woodbury space (training rows + picks)
        # no wider than the features
        if (not self.exchange and use_lazy(self.lazy, resolve_device(self.device)) and np.all(X.sizes == 1)
                and m0 + k <= X.n_features):
            state = LazyDOptimal(X.rows, reg, None if X_train is None else X_train.rows, k)
            picks, gains, self.n_rescored_, _ = lazy_greedy(state.gains(), state.rescore, state.add, k,
                                                            current=True, batch=64)
            self._set_selection(picks, gains)
            self.n_swaps_ = 0
            self.log_det_ = state.log_det_information()
            return self
        picks, gains, swaps, state = run_greedy(X, X_train, k, reg=reg, score=log_det_gain,
                                                criterion=lambda st: st.log_det_information(), device=self.device,
                                                do_exchange=bool(self.exchange))
        self._set_selection(picks, gains)
        self.n_swaps_ = swaps
        self.log_det_ = state.log_det_information()
        return self
