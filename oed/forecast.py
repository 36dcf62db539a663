"""Offline budget forecast: how the posterior variance falls with the number of labels.

For a linear-Gaussian model the posterior covariance after labelling a set S
depends on the features alone, Σ(S) = (λI + Σ_{A∈S} J(A)ᵀJ(A))⁻¹, so the
error a labelling budget buys can be forecast before any reference
calculation (Barzdajn & Race, Modelling Simul. Mater. Sci. Eng. 33, 025011
(2025); docs/design.md §3). For every strategy the pool is ranked once at the
largest budget and the prefix of k picks is scored for each budget k: mean
predictive variance over the target rows, effective dimension d − λ tr Σ and
log det Λ.

With labelled data (energies and forces of a training set), the noise scale c
and prior scale s of the model y = Rα + ε, α ~ N(0, s²I), ε ~ N(0, c²I) (rows R
already divided by the nominal σ_E·N and σ_F) are calibrated by maximising the
marginal likelihood (type-II maximum likelihood; Rasmussen & Williams, "Gaussian
Processes for Machine Learning", MIT Press 2006, §5.4). Then λ = c²/s² and the
forecast variance of a force component becomes (c σ_F)² r̃ᵀΣr̃ — a force error
in meV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from oed.engine import InformationState
from oed.errors import InputError
from oed.information import DEFAULT_PRIOR_PRECISION, DesignBlocks, as_blocks
from oed.selectors import make_selector


@dataclass(frozen=True)
class Calibration:
    """Noise and prior scales fitted on labelled rows (see module docstring).

    Attributes
    ----------
    noise_scale : float
        c: multiplies the nominal σ_E and σ_F.
    prior_scale : float
        s: prior standard deviation of the parameters, in units of the scaled rows.
    reg : float
        λ = c²/s², the prior precision to use with unit-noise rows.
    log_marginal_likelihood : float
        At the optimum, nats.
    n_rows : int
        Labelled rows used.
    """

    noise_scale: float
    prior_scale: float
    reg: float
    log_marginal_likelihood: float
    n_rows: int


def calibrate(rows: np.ndarray, targets: np.ndarray) -> Calibration:
    """Fit c and s by maximising log N(ỹ | 0, s² R Rᵀ + c² I).

    Parameters
    ----------
    rows : ndarray, shape (m, d)
        Scaled design rows R of the labelled configurations.
    targets : ndarray, shape (m,)
        Labels divided by the same nominal σ (dimensionless), energies with
        their per-atom mean removed.

    Raises
    ------
    InputError
        Shapes that do not match or fewer than 2 rows.
    """
    R = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    if R.ndim != 2 or y.shape != (len(R),) or len(R) < 2:
        raise InputError(f"calibration needs rows (m, d) and targets (m,), m >= 2; got {R.shape}, {y.shape}")
    if len(R) <= R.shape[1]:
        import warnings

        # With no more rows than features the labels lie in the row space: the noise scale is not
        # identifiable and the evidence drives it to zero (λ → 0, a numerically useless prior).
        warnings.warn(f"calibrating on {len(R)} labelled rows for {R.shape[1]} features: the noise scale is not "
                      "identifiable; label more configurations or use fewer features", stacklevel=2)
    U, sv, _ = np.linalg.svd(R, full_matrices=False)
    proj = U.T @ y
    rest = float(y @ y - proj @ proj)  # part of y outside the row space
    m, r = len(y), len(sv)
    ev = sv**2

    def nll(theta):
        s2, c2 = np.exp(2 * theta[0]), np.exp(2 * theta[1])
        var = s2 * ev + c2
        val = 0.5 * (np.sum(np.log(var)) + np.sum(proj**2 / var) + (m - r) * np.log(c2) + max(rest, 0) / c2)
        return val + 0.5 * m * np.log(2 * np.pi)

    best = min((minimize(nll, x0, method="L-BFGS-B") for x0 in ([0.0, 0.0], [2.0, -2.0], [-2.0, 1.0])),
               key=lambda res: res.fun)
    s, c = float(np.exp(best.x[0])), float(np.exp(best.x[1]))
    return Calibration(noise_scale=c, prior_scale=s, reg=c**2 / s**2, log_marginal_likelihood=-float(best.fun), n_rows=m)


@dataclass
class StrategyForecast:
    """Forecast of one strategy: one entry per budget."""

    budgets: list[int]
    variance: list[float]
    effective_dimension: list[float]
    log_det: list[float]
    force_rmse: list[float] | None = None
    selected: list[int] = field(default_factory=list)
    budget_to_target: int | None = None


def forecast(
    X,
    budgets,
    strategies,
    *,
    X_train=None,
    y_train=None,
    X_target=None,
    reg: float = DEFAULT_PRIOR_PRECISION,
    seed: int | None = 0,
    target_variance: float | None = None,
    force_rows=None,
    sigma_force: float | None = None,
    calibration: Calibration | None = None,
    device: str = "auto",
) -> dict[str, StrategyForecast]:
    """Forecast mean target variance against budget for each strategy.

    Parameters
    ----------
    X : array (n, d) or DesignBlocks
        Pool features / design blocks.
    budgets : sequence of int
        Budgets k (numbers of new labels), at most the pool size.
    strategies : sequence of str
        Selector names.
    X_train : array or DesignBlocks, optional
        Labelled already: every design is conditioned on it.
    y_train : ndarray, optional
        Energies of the training configurations, used by selectors that fit
        hyperparameters on labels (``uses_labels``: ``info-gain``).
    X_target : array (t, d) or DesignBlocks, optional
        Rows whose mean predictive variance is forecast; default: all pool
        rows. Selectors that aim at a target (``uses_target``) also select for it.
    reg : float, default :data:`~oed.information.DEFAULT_PRIOR_PRECISION` (1.0)
        Prior precision λ (use ``calibration.reg`` when calibrated).
    target_variance : float, optional
        Report the smallest budget whose forecast variance is at most this.
    force_rows : ndarray of bool, optional
        Which target rows are force rows; with ``calibration`` and
        ``sigma_force`` (eV/Å) a force RMSE forecast (meV/Å) is reported.

    Returns
    -------
    dict
        strategy name → :class:`StrategyForecast`.

    Raises
    ------
    InputError
        Empty or non-positive budgets, budgets above the pool size, unknown strategies.
    """
    blocks = as_blocks(X)
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1:
        raise InputError(f"budgets must be positive integers, got {budgets}")
    if budgets[-1] > len(blocks):
        raise InputError(f"budget {budgets[-1]} exceeds the pool size {len(blocks)}")
    out: dict[str, StrategyForecast] = {}
    for name in strategies:
        selector = make_selector(name, budgets[-1], seed=seed, reg=reg)
        # the target is always scored; only selectors that aim at one are given it to select for
        selector.fit(blocks, X_train=X_train, y_train=y_train, X_target=X_target if selector.uses_target else None)
        order = np.asarray(selector.selected_idx_, dtype=int)
        out[name] = score_design(blocks, order, budgets, X_train=X_train, X_target=X_target, reg=reg,
                                 target_variance=target_variance, force_rows=force_rows, sigma_force=sigma_force,
                                 calibration=calibration, device=device)
    return out


def score_design(
    X,
    order,
    budgets,
    *,
    X_train=None,
    X_target=None,
    reg: float = DEFAULT_PRIOR_PRECISION,
    target_variance: float | None = None,
    force_rows=None,
    sigma_force: float | None = None,
    calibration: Calibration | None = None,
    device: str = "auto",
) -> StrategyForecast:
    """Forecast of a given design: its first k picks scored for each budget k, no labels used.

    What :func:`forecast` does for each strategy's ranking, for any ordered design — e.g. the
    picks a comparison actually measured, so forecast and measurement describe the same data.

    Parameters
    ----------
    X : array (n, d) or DesignBlocks
        Pool features / design blocks.
    order : sequence of int
        Pool indices in pick order, at least ``max(budgets)`` of them.
    budgets, X_train, X_target, reg, target_variance, force_rows, sigma_force, calibration, device
        As in :func:`forecast`.

    Returns
    -------
    StrategyForecast

    Raises
    ------
    InputError
        Budgets that are not positive or exceed the design's length.
    """
    blocks = as_blocks(X)
    order = np.asarray(order, dtype=int)
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1 or budgets[-1] > len(order):
        raise InputError(f"budgets must be positive and at most the design's {len(order)} picks, got {budgets}")
    target = blocks.rows if X_target is None else as_blocks(X_target).rows
    state = InformationState(blocks, reg=reg, train=X_train, target=target, track="target", device=device)
    fc = StrategyForecast(budgets=[], variance=[], effective_dimension=[], log_det=[], selected=order.tolist())
    if calibration is not None and force_rows is not None and sigma_force is not None:
        fc.force_rmse = []
    done = 0
    for k in budgets:
        for j in order[done:k]:
            state.add(int(j))
        done = k
        fc.budgets.append(k)
        fc.variance.append(state.mean_target_variance())
        fc.effective_dimension.append(state.effective_dimension())
        fc.log_det.append(state.log_det_information())
        if fc.force_rmse is not None:
            fc.force_rmse.append(_force_rmse(state, target, force_rows, calibration, sigma_force))
    if target_variance is not None:
        fc.budget_to_target = next((k for k, v in zip(fc.budgets, fc.variance) if v <= target_variance), None)
    return fc


def _force_rmse(state, target, force_rows, cal: Calibration, sigma_force: float) -> float:
    """Forecast RMS force error in meV/Å: c σ_F √(mean r̃ᵀΣr̃ over force rows)."""
    import torch

    from oed._torch import as_tensor

    T = as_tensor(target[np.asarray(force_rows, dtype=bool)], state.device)
    var = torch.einsum("ij,jk,ik->i", T, state.cov, T).mean()
    return float(1000.0 * cal.noise_scale * sigma_force * torch.sqrt(var))


__all__ = ["Calibration", "DesignBlocks", "StrategyForecast", "calibrate", "forecast", "score_design"]
