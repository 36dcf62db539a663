"""Figures of the offline design (matplotlib, Agg back-end; files written atomically)."""

from __future__ import annotations

from pathlib import Path

from oed.io import atomic_open


def save_figure(fig, path, *, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically and close it: the one figure writer of oed and loops.

    The figure is rendered into a temporary file beside ``path`` that then replaces it
    (:func:`oed.io.atomic_open`): a crash leaves the old file or the new one, never half
    a PNG. The format comes from the suffix (PNG when there is none).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Closed afterwards, also when writing fails.
    path : path-like
        Image to write; missing folders are created.
    dpi : int, default 120

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        A suffix matplotlib cannot write (``path`` is then unchanged).
    """
    import matplotlib.pyplot as plt

    p = Path(path)
    try:
        with atomic_open(p, "wb") as fh:
            fig.savefig(fh, dpi=dpi, format=p.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
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
