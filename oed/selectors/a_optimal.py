"""A-optimal selection: minimum trace of the posterior covariance."""

from __future__ import annotations

from oed.information import DEFAULT_PRIOR_PRECISION
from oed.selectors._base import SelectorBase
from oed.selectors._greedy import check_reg, run_greedy


def trace_reduction(state):
    """Score: decrease of tr Σ on adding each candidate, (n,) (σ² units; higher is better)."""
    return state.variance_reduction()


class GreedyAOptimal(SelectorBase):
    """Greedy A-optimal design: each pick most reduces tr Σ, the summed parameter variance.

    The gain of candidate c is tr(Σ J_cᵀ (I + J_c Σ J_cᵀ)⁻¹ J_c Σ), evaluated
    for all candidates from cached J_c Σ (see :mod:`oed.engine`).

    Parameters
    ----------
    n_to_select : int
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
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

    uses_prior_precision = True
    gains_unit = "variance reduction"

    def __init__(self, n_to_select: int, *, reg: float = DEFAULT_PRIOR_PRECISION, exchange: bool = False,
                 device: str = "auto") -> None:
        self.n_to_select = n_to_select
        self.reg = reg
        self.exchange = exchange
        self.device = device

    def fit(self, X, *, X_train=None, y_train=None, X_target=None) -> GreedyAOptimal:
        """Select from the pool; shapes, errors and the ignored ``y_train`` as :meth:`GreedyDOptimal.fit`."""
        X, X_train, k = self._validate(X, X_train, X_target, blocks=True)
        reg = check_reg(self.reg)
        picks, gains, swaps, state = run_greedy(X, X_train, k, reg=reg, score=trace_reduction, track="trace",
                                                criterion=lambda st: -st.trace_covariance(), device=self.device,
                                                do_exchange=bool(self.exchange))
        self._set_selection(picks, gains)
        self.n_swaps_ = swaps
        self.trace_ = state.trace_covariance()
        return self
