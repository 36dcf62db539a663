"""How well an uncertainty ranks and sizes the true error: Spearman ρ and a calibration curve.

The true error of a configuration is its largest atomic force error,
maxᵢ |Fᵢ(model) − Fᵢ(reference)| in eV/Å (:func:`force_errors`), the quantity a committee's
force deviation ε_F = maxᵢ √⟨|Fᵢ − ⟨Fᵢ⟩|²⟩ (Zhang et al., Comput. Phys. Commun. 253, 107206,
2020) stands in for during exploration. :func:`calibration` reports

- the Spearman rank correlation between uncertainty and error over configurations (does the
  uncertainty *order* configurations by error? what selection with trust levels relies on);
- a calibration curve: configurations sorted by σ into equal-count bins, the RMS error of each
  bin against its RMS σ (on the diagonal when σ has the size of the error; Levi et al.,
  Sensors 22, 5540, 2022 use the same binned RMSE-vs-RMV form); and one scale factor
  ``RMS(error) / RMS(σ)`` by which σ would have to be multiplied to match the errors on
  average (the committee rescaling of Imbalzano et al., J. Chem. Phys. 154, 074102, 2021,
  there fitted by likelihood; here the plain RMS ratio).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from oed.errors import InputError
from oed.io import reference_forces

__all__ = ["calibration", "committee_calibration", "force_errors", "plot_calibration"]


def force_errors(predicted: Sequence[np.ndarray], frames: Sequence[Atoms]) -> np.ndarray:
    """Largest atomic force error per configuration, maxᵢ |F_pred,i − F_ref,i| (eV/Å).

    Parameters
    ----------
    predicted : sequence of arrays, each (n_atoms_i, 3)
        Predicted forces, eV/Å.
    frames : sequence of ase.Atoms
        With reference forces (``REF_forces``, else plain ``forces``), eV/Å.

    Returns
    -------
    ndarray, shape (n,)

    Raises
    ------
    InputError
        Different lengths, a configuration without reference forces or with other shapes.
    """
    if len(predicted) != len(frames):
        raise InputError(f"{len(predicted)} predicted force arrays for {len(frames)} configurations")
    out = np.empty(len(frames))
    for j, (f, atoms) in enumerate(zip(predicted, frames)):
        ref = reference_forces(atoms)
        if ref is None:
            raise InputError(f"configuration {j} has no reference forces (REF_forces or forces)")
        f = np.asarray(f, dtype=float)
        if f.shape != ref.shape or f.shape != (len(atoms), 3):
            raise InputError(f"configuration {j}: predicted forces {f.shape}, reference {ref.shape}, "
                             f"{len(atoms)} atoms")
        out[j] = float(np.linalg.norm(f - ref, axis=1).max())
    return out


def calibration(sigma: Sequence[float], error: Sequence[float], *, n_bins: int = 10) -> dict[str, Any]:
    """Spearman ρ between uncertainty and true error, and a binned calibration curve.

    Parameters
    ----------
    sigma : sequence of float, length n
        Uncertainty per configuration (e.g. ``sigma_force_max``, eV/Å), finite and >= 0.
    error : sequence of float, length n
        True error per configuration in the same unit (e.g. :func:`force_errors`), finite.
    n_bins : int, default 10
        Equal-count bins of the calibration curve (fewer when n is smaller).

    Returns
    -------
    dict
        ``n``; ``spearman`` (ρ, NaN when σ or the error is constant) and ``p_value`` (scipy's,
        two-sided); ``scale`` = RMS(error)/RMS(σ) (NaN when every σ is 0); ``bins``: a list of
        ``{"n", "sigma_rms", "error_rms", "sigma_min", "sigma_max"}`` in increasing σ.

    Raises
    ------
    InputError
        Lengths that differ, fewer than 3 configurations, non-finite or negative σ, non-finite
        errors, or ``n_bins`` < 1.
    """
    from scipy.stats import spearmanr

    s = np.asarray(sigma, dtype=float).ravel()
    e = np.asarray(error, dtype=float).ravel()
    if s.shape != e.shape:
        raise InputError(f"sigma and error differ in length: {s.size} and {e.size}")
    if s.size < 3:
        raise InputError(f"calibration needs at least 3 configurations, got {s.size}")
    if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
        raise InputError("sigma must be finite and >= 0 for every configuration")
    if not np.all(np.isfinite(e)):
        raise InputError("error must be finite for every configuration")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if np.ptp(s) == 0 or np.ptp(e) == 0:
        rho, p = math.nan, math.nan  # a constant has no ranking (scipy would warn and return NaN)
    else:
        result = spearmanr(s, e)
        rho, p = float(result.statistic), float(result.pvalue)
    order = np.argsort(s, kind="stable")
    bins = []
    for part in np.array_split(order, min(n_bins, s.size)):
        bins.append({"n": int(part.size), "sigma_rms": float(np.sqrt(np.mean(s[part] ** 2))),
                     "error_rms": float(np.sqrt(np.mean(e[part] ** 2))),
                     "sigma_min": float(s[part].min()), "sigma_max": float(s[part].max())})
    rms_s = float(np.sqrt(np.mean(s ** 2)))
    return {"n": int(s.size), "spearman": rho, "p_value": p,
            "scale": float(np.sqrt(np.mean(e ** 2)) / rms_s) if rms_s > 0 else math.nan, "bins": bins}


def committee_calibration(committee: Any, frames: Sequence[Atoms], *, n_bins: int = 10) -> dict[str, Any]:
    """:func:`calibration` of a committee's ``sigma_force_max`` against its :func:`force_errors` on ``frames``.

    Returns that dict plus ``sigma`` and ``error`` (lists, eV/Å, one per configuration) for a
    plot; raises as :func:`force_errors`, :func:`calibration` and the committee's prediction.
    """
    frames = list(frames)
    out = committee.predict_uncertainty(frames)
    sigma = out["sigma_force_max"]
    error = force_errors(out["forces"], frames)
    result = calibration(sigma, error, n_bins=n_bins)
    result.update(sigma=[float(x) for x in sigma], error=[float(x) for x in error])
    return result


def plot_calibration(sigma: Sequence[float], error: Sequence[float], path: str | os.PathLike, *,
                     title: str = "", n_bins: int = 10, unit: str = "eV/Å") -> dict[str, Any]:
    """Scatter of true error against uncertainty, the binned calibration curve and y = x; log–log.

    The figure is written atomically (:func:`oed.plots.save_figure`, Agg back-end).

    Parameters
    ----------
    sigma, error : sequence of float
        As for :func:`calibration`.
    path : path-like
        Image to write (PNG unless the suffix says otherwise).
    title : str
    n_bins : int
    unit : str
        Axis unit.

    Returns
    -------
    dict
        The :func:`calibration` result plotted (ρ and n are printed on the figure).

    Raises
    ------
    InputError
        As :func:`calibration`.
    """
    result = calibration(sigma, error, n_bins=n_bins)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oed.plots import save_figure

    s = np.asarray(sigma, dtype=float)
    e = np.asarray(error, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4.5), constrained_layout=True)
    # zeros have no place on log axes: drawn at the smallest positive value shown
    positive = np.concatenate([s[s > 0], e[e > 0]])
    floor = float(positive.min()) if positive.size else 1e-6
    ax.scatter(np.maximum(s, floor), np.maximum(e, floor), s=8, alpha=0.5, color="C0", label="configurations")
    bs = [b["sigma_rms"] for b in result["bins"]]
    be = [b["error_rms"] for b in result["bins"]]
    ax.plot(np.maximum(bs, floor), np.maximum(be, floor), marker="o", color="C3", label=f"RMS per bin ({len(bs)})")
    lo = floor
    hi = float(max(s.max(), e.max(), floor * 10))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--", label="error = σ")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):  # 0.1, 0.2, 0.5 rather than 2×10⁻¹ labels that collide
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        lo_view, hi_view = axis.get_view_interval()
        # minor labels only where the range is short enough for them to fit
        axis.set_minor_formatter(ScalarFormatter() if hi_view / lo_view < 100 else NullFormatter())
    ax.set_xlabel(f"uncertainty σ ({unit})")
    ax.set_ylabel(f"true error ({unit})")
    rho = result["spearman"]
    ax.text(0.03, 0.97, f"Spearman ρ = {rho:.2f}   n = {result['n']}" if math.isfinite(rho)
            else f"Spearman ρ undefined   n = {result['n']}", transform=ax.transAxes, va="top")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    save_figure(fig, path)
    return result
