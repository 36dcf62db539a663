"""A-optimal selection: minimum trace of the posterior covariance."""

from __future__ import annotations

from oed.selectors._base import SelectorMixin
from oed.selectors._greedy import check_reg, run_greedy


def trace_reduction(state):
    """Score: decrease of tr Σ on adding each candidate, (n,) (σ² units; higher is better)."""
    return state.variance_reduction()


class GreedyAOptimal(SelectorMixin):
    """Greedy A-optimal design: each pick most reduces tr Σ, the summed parameter variance.

    The gain of candidate c is tr(Σ J_cᵀ (I + J_c Σ J_cᵀ)⁻¹ J_c Σ), evaluated
    for all candidates from cached J_c Σ (see :mod:`oed.engine`).

    Parameters
    ----------
    n_to_select : int
    reg : float, default 1e-3
        Prior precision λ.
    exchange : bool, default False
        Fedorov exchange passes after greedy.
    device : str, default "auto"

    Attributes
    ----------
    selected_idx_, gains_ (decrease of tr Σ per pick), n_selected_, n_swaps_,
    trace_ : float
        tr Σ after training set and picks.

    References
    ----------
    Atkinson, Donev & Tobias, "Optimum Experimental Designs, with SAS" (OUP 2007), §10.7.
    """

    def __init__(self, n_to_select: int, *, reg: float = 1e-3, exchange: bool = False, device: str = "auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.exchange = exchange
        self.device = device

    def fit(self, X, *, X_train=None) -> GreedyAOptimal:
        """Select from the pool; shapes and errors as :meth:`GreedyDOptimal.fit`."""
        X, X_train, k = self._validate(X, X_train, blocks=True)
        reg = check_reg(self.reg)
        picks, gains, swaps, state = run_greedy(X, X_train, k, reg=reg, score=trace_reduction, track="trace",
                                                criterion=lambda st: -st.trace_covariance(), device=self.device,
                                                do_exchange=bool(self.exchange))
        self.selected_idx_, self.gains_, self.n_selected_, self.n_swaps_ = picks, gains, k, swaps
        self.trace_ = state.trace_covariance()
        return self
