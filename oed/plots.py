"""Figures of the offline design (matplotlib, Agg back-end; files written atomically)."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path, *, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically (temporary file, then rename) and close it.

    A crash leaves the old file or the new one, never half a PNG. Returns the path.
    """
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{os.getpid()}{p.suffix or '.png'}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return p


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
    relative = "random" in fc and len(fc) > 1
    ncols = 2 + calibrated + relative
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), constrained_layout=True)
    panels = [("variance", "mean predictive variance (σ²)", True), ("effective_dimension", "effective dimension", False)]
    if relative:  # the comparison a user wants: how much better than random, budget by budget
        panels.insert(1, ("relative", "variance / random's variance", False))
    if calibrated:
        panels.append(("force_rmse", "forecast force RMSE (meV/Å)", True))
    base = fc.get("random")
    for ax, (key, label, logy) in zip(axes, panels):
        if key == "relative":
            ax.axhline(1.0, color="0.5", lw=1, ls="--")
        for i, (name, f) in enumerate(fc.items()):
            if key == "relative":
                ys = [v / b for v, b in zip(f.variance, base.variance)]
            else:
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
    save_figure(fig, path)
