"""Learning-curve figures (matplotlib, Agg back-end: no display needed)."""

from __future__ import annotations

import os


def plot_learning_curve(results: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Force and energy MAE against the number of labels, log–log, one line per test set.

    Parameters
    ----------
    results : list of dict
        Rounds as returned by :func:`loops.loop.run_loop`.
    path : path-like
        PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n_labelled"] for r in results]
    names = sorted({name for r in results for name in r["errors"]})
    from matplotlib.ticker import LogLocator, ScalarFormatter

    # one colour per test set in both panels
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "force_mae", "force MAE (meV/Å)"),
        (axes[1], "energy_mae", "energy MAE (meV/atom)"),
    ):
        for name in names:
            ys = [r["errors"].get(name, {}).get(key) for r in results]
            pts = [(x, y) for x, y in zip(n, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, color=colours[name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 10, 20, 50 rather than 10^1, 2x10^1
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("labelled configurations")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no test set has these labels", ha="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    from oed.plots import save_figure

    save_figure(fig, path)
