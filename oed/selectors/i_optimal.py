"""I-optimal selection: minimum mean predictive variance over a target set."""

from __future__ import annotations

from oed.information import DEFAULT_PRIOR_PRECISION, as_blocks, check_features
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import check_reg, run_greedy


def target_variance_reduction(state):
    """Score: decrease of the mean predictive variance over the target rows, (n,)."""
    return state.variance_reduction()


class GreedyIOptimal(SelectorBase):
    """Greedy I-optimal (V-optimal) design: picks that most reduce the mean predictive
    variance (1/|T|) Σ_{t∈T} φ_tᵀ Σ φ_t over a target set T.

    This is the criterion that aims at a deployment domain different from the
    pool (docs/design.md §2). Without a target the pool itself is the target.

    Parameters
    ----------
    n_to_select : int
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
        Prior precision λ.
    exchange : bool, default False
    device : str, default "auto"

    Attributes
    ----------
    selected_idx_, gains_ (decrease of the mean target variance per pick, σ² units),
    n_selected_, n_swaps_,
    target_variance_ : float
        Mean predictive variance over the target after training set and picks (σ² units).

    References
    ----------
    Atkinson, Donev & Tobias (OUP 2007), §10.6; Krause, Singh & Guestrin, JMLR 9, 235 (2008).
    """

    uses_target = True
    uses_prior_precision = True
    gains_unit = "variance reduction"

    def __init__(self, n_to_select: int, *, reg: float = DEFAULT_PRIOR_PRECISION, exchange: bool = False,
                 device: str = "auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.exchange = exchange
        self.device = device

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> GreedyIOptimal:
        """Select from the pool.

        Parameters
        ----------
        X : array (n, d) or DesignBlocks
        X_train : array or DesignBlocks, optional
        y_train : ignored
            Label-free, as :meth:`GreedyDOptimal.fit`.
        X_target : array (t, d) or DesignBlocks, optional
            Rows whose predictive variance is minimised; default: all rows of X.

        Raises
        ------
        InputError
            As :meth:`GreedyDOptimal.fit`, or a target with another feature count.
        """
        X, X_train, k = self._validate(X, X_train, X_target, blocks=True)
        reg = check_reg(self.reg)
        blocks = as_blocks(X)
        target = blocks.rows if X_target is None else as_blocks(X_target).rows
        check_features(target, "X_target", n_features=blocks.n_features)
        picks, gains, swaps, state = run_greedy(X, X_train, k, reg=reg, score=target_variance_reduction,
                                                criterion=lambda st: -st.mean_target_variance(),
                                                track="target", target=target, device=self.device,
                                                do_exchange=bool(self.exchange))
        self._set_selection(picks, gains)
        self.n_swaps_ = swaps
        self.target_variance_ = state.mean_target_variance()
        return self
