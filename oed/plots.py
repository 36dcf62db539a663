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


#: Axis labels of the shift diagnostics (oed.shift.DIAGNOSTICS).
_SHIFT_LABELS = {
    "feature": "SOAP distance to nearest training environment",
    "gamma": "extrapolation grade γ",
    "force_norm": "mean |F| of the prior (eV/Å)",
    "connectivity": "W₁ of Laplacian spectrum to nearest training graph",
}


def plot_shift(results: dict, path, *, title: str = "") -> Path:
    """One panel per shift diagnostic: each file's values (box and points) and the flag threshold.

    Parameters
    ----------
    results : dict of str to oed.shift.ShiftResult
        One entry per test file, in plotting order.
    path : path-like
        Image to write (atomically).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from oed.shift import DIAGNOSTICS

    names = list(results)
    diags = [d for d in DIAGNOSTICS if any(d in r.flagged for r in results.values())]
    fig, axes = plt.subplots(1, len(diags), figsize=(max(4.0, 1.1 * len(names) + 1.5) * len(diags) / 1.6, 4.2),
                             constrained_layout=True, squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for ax, d in zip(axes[0], diags):
        finite = [v[np.isfinite(v)] for v in (np.asarray(results[n].values[d], float) for n in names)]
        top = max([float(v.max()) for v in finite if v.size] + [results[names[0]].thresholds.get(d, 1.0)]) * 1.15
        labels = []
        for k, (name, v) in enumerate(zip(names, finite), start=1):
            n_inf = int(np.sum(np.isinf(results[name].values[d])))
            if v.size:
                ax.boxplot(v, positions=[k], widths=0.5, showfliers=False, medianprops={"color": "C1"})
                ax.scatter(k + rng.uniform(-0.18, 0.18, v.size), v, s=6, alpha=0.4, color="C0", zorder=3)
            if n_inf:
                ax.scatter(k + rng.uniform(-0.18, 0.18, n_inf), np.full(n_inf, top / 1.08), marker="^", s=14,
                           color="C3", zorder=3)
            labels.append(f"{name}\n{100 * float(np.mean(results[name].flagged[d])):.0f}% flagged")
        ax.axhline(results[names[0]].thresholds[d], color="C3", ls="--", lw=1.0, label="flag threshold")
        if d == "gamma":
            ax.set_yscale("log")
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(_SHIFT_LABELS[d], fontsize=9)
        ax.set_title(d, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
