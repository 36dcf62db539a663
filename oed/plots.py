"""Figures of the offline design (matplotlib, Agg back-end; files written atomically)."""

from __future__ import annotations

import os
from pathlib import Path


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{os.getpid()}{p.suffix or '.png'}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, p)


def plot_forecast(fc: dict, path, *, title: str = "") -> None:
    """Forecast mean predictive variance (and force RMSE when calibrated) against budget.

    Parameters
    ----------
    fc : dict
        strategy → :class:`oed.forecast.StrategyForecast`.
    path : path-like
        PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, ScalarFormatter

    calibrated = any(f.force_rmse for f in fc.values())
    ncols = 3 if calibrated else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), constrained_layout=True)
    panels = [("variance", "mean predictive variance (σ²)", True), ("effective_dimension", "effective dimension", False)]
    if calibrated:
        panels.append(("force_rmse", "forecast force RMSE (meV/Å)", True))
    for ax, (key, label, logy) in zip(axes, panels):
        for i, (name, f) in enumerate(fc.items()):
            ys = getattr(f, key)
            if ys:
                ax.plot(f.budgets, ys, marker="o", color=f"C{i % 10}", label=name)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("labelling budget (configurations)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)
