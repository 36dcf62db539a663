"""Statistics and reports of a strategy comparison: confidence intervals, label efficiency, AULC.

Input is the tidy table of :mod:`loops.compare` — one row per (strategy, seed, budget,
test_set, metric, value), errors in meV/atom (energy) and meV/Å (forces). Everything here is
a pure function of those rows, so ``summary.md`` and the plots can be rebuilt from
``results.csv`` alone (:func:`render_summary`).

- Mean and 95% confidence interval across seeds: Student t with n − 1 degrees of freedom
  (the seeds are few; a normal quantile would understate the interval).
- Label-efficiency ratio against a reference strategy (random by default): the reference
  budget that reaches a strategy's error, read off the reference's mean learning curve by
  linear interpolation in log(budget)–log(error), divided by the strategy's budget; > 1 means
  fewer labels for the same error. Outside the reference's measured range the ratio is only a
  bound (reported as "> x" or "< x").
- Area under the learning curve (AULC): the mean of log10(error) over log10(budget)
  (trapezoid rule), reported as 10**that — the geometric-mean error over the budget range, in
  the metric's units; lower is better.

Reference for the t interval: any statistics text, e.g. Wasserman, "All of Statistics"
(Springer 2004), §6.3.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oed.errors import InputError
from oed.io import atomic_write_text
from oed.plots import save_figure

#: Columns of results.csv, in order.
COLUMNS = ("strategy", "seed", "budget", "test_set", "metric", "value")
#: Metrics and their units.
UNITS = {
    "energy_mae": "meV/atom",
    "energy_rmse": "meV/atom",
    "force_mae": "meV/Å",
    "force_rmse": "meV/Å",
}
#: Metric shown first in tables and plots when a test set has it.
HEADLINE = ("force_mae", "energy_mae")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean.

    Parameters
    ----------
    values : sequence of float, length n >= 1
    confidence : float, default 0.95

    Returns
    -------
    (mean, half_width)
        ``half_width = t_{(1+c)/2, n-1} · s / √n`` with ``s`` the sample standard deviation
        (ddof = 1); ``nan`` for n = 1 (one seed says nothing about the spread).

    Raises
    ------
    InputError
        No values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise InputError("no values for a confidence interval")
    if not np.all(np.isfinite(x)):
        raise InputError("non-finite value in a confidence interval")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    s = float(x.std(ddof=1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * s / math.sqrt(x.size))


def aulc(budgets: Sequence[float], errors: Sequence[float]) -> float:
    """Geometric-mean error over the budget range: 10**(mean of log10 error over log10 budget).

    The trapezoid rule in log–log coordinates, divided by the log-budget range; a single budget
    gives that budget's error.

    Parameters
    ----------
    budgets, errors : sequences of positive floats, same length >= 1

    Raises
    ------
    InputError
        Mismatched lengths, repeated budgets or non-positive values.
    """
    b = np.asarray(budgets, dtype=float)
    e = np.asarray(errors, dtype=float)
    if b.shape != e.shape or b.size == 0:
        raise InputError("budgets and errors must be non-empty and of the same length")
    if np.any(b <= 0) or np.any(e <= 0):
        raise InputError("budgets and errors must be positive for a log–log area")
    order = np.argsort(b)
    lb, le = np.log10(b[order]), np.log10(e[order])
    if np.any(np.diff(lb) == 0):
        raise InputError("repeated budget in a learning curve")
    if b.size == 1:
        return float(e[0])
    from scipy.integrate import trapezoid

    return float(10 ** (trapezoid(le, lb) / (lb[-1] - lb[0])))


@dataclass(frozen=True)
class Efficiency:
    """Label-efficiency ratio: reference budget reaching the same error / this budget.

    ``bound`` is ``""`` inside the reference's measured range, ``">"`` when the strategy is
    better than the reference at its largest budget (the ratio is then at least ``ratio``),
    ``"<"`` when it is worse than the reference at its smallest budget.
    """

    ratio: float
    bound: str = ""

    def __str__(self) -> str:
        return f"{self.bound}{self.ratio:.2f}" if self.bound else f"{self.ratio:.2f}"


def label_efficiency(
    error: float, budget: float, ref_budgets: Sequence[float], ref_errors: Sequence[float]
) -> Efficiency:
    """How many reference labels reach ``error``, relative to ``budget`` (log–log interpolation).

    Parameters
    ----------
    error : float
        The strategy's (mean) error at ``budget``.
    budget : float
    ref_budgets, ref_errors : sequences
        The reference strategy's mean learning curve.

    Returns
    -------
    Efficiency
        ``ratio = b_ref / budget`` where the reference curve, interpolated linearly in
        log(budget)–log(error), reaches ``error`` at ``b_ref``. The reference curve is made
        monotone (running minimum of the error) first, since a noisy curve can rise locally.
        Outside its range: the bound at the nearest end.

    Raises
    ------
    InputError
        Non-positive values or an empty reference curve.
    """
    rb = np.asarray(ref_budgets, dtype=float)
    re_ = np.asarray(ref_errors, dtype=float)
    if rb.size == 0 or rb.shape != re_.shape:
        raise InputError("reference learning curve is empty or mismatched")
    if error <= 0 or budget <= 0 or np.any(rb <= 0) or np.any(re_ <= 0):
        raise InputError("errors and budgets must be positive")
    order = np.argsort(rb)
    rb, re_ = rb[order], np.minimum.accumulate(re_[order])
    if error >= re_[0]:
        return Efficiency(rb[0] / budget, "<" if error > re_[0] else "")
    if error <= re_[-1]:
        return Efficiency(rb[-1] / budget, ">" if error < re_[-1] else "")
    # re_ is non-increasing: find the segment where it crosses `error`
    le, lb = np.log(re_), np.log(rb)
    j = int(np.searchsorted(-le, -math.log(error)))  # first index with re_[j] <= error
    x0, x1, y0, y1 = lb[j - 1], lb[j], le[j - 1], le[j]
    x = x0 if y1 == y0 else x0 + (math.log(error) - y0) * (x1 - x0) / (y1 - y0)
    return Efficiency(math.exp(x) / budget)


# -- tidy rows ------------------------------------------------------------------------------------
def read_results(path: str | os.PathLike, *, refinement: str | None = "none") -> list[dict]:
    """Rows of a results.csv (seed and budget as int, value as float).

    A file scored with test-time refinements has a ``refinement`` column (:mod:`loops.refine`):
    only the rows of ``refinement`` are returned (default ``"none"``, the models as trained, so
    every table and curve reads as before); ``None`` returns every row, each with its
    ``refinement`` (``"none"`` in a file without the column).

    Raises
    ------
    InputError
        Missing file or columns.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"results file not found: {p}")
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{p} lacks column(s) {', '.join(missing)}")
        rows = []
        for r in reader:
            kind = r.get("refinement") or "none"
            if refinement is not None and kind != refinement:
                continue
            rows.append({"strategy": r["strategy"], "seed": int(r["seed"]), "budget": int(r["budget"]),
                         "test_set": r["test_set"], "metric": r["metric"], "value": float(r["value"]),
                         **({"refinement": kind} if refinement is None else {})})
        return rows


def write_results(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Write tidy rows as CSV, atomically, sorted for stable diffs."""
    import io

    rows = sorted(rows, key=lambda r: (r["test_set"], r["metric"], r["strategy"], r["budget"], r["seed"],
                                       r.get("refinement", "")))
    refined = any("refinement" in r for r in rows)  # the column only where refinements were scored
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *(["refinement"] if refined else [])])
    for r in rows:
        writer.writerow([r["strategy"], r["seed"], r["budget"], r["test_set"], r["metric"], f"{r['value']:.6g}",
                         *([r.get("refinement", "none")] if refined else [])])
    atomic_write_text(path, buf.getvalue())


@dataclass(frozen=True)
class Curve:
    """A strategy's learning curve on one test set and metric, across seeds."""

    budgets: tuple[int, ...]
    values: dict[int, dict[int, float]]  # budget -> seed -> value

    def mean(self) -> np.ndarray:
        return np.array([np.mean(list(self.values[b].values())) for b in self.budgets])

    def interval(self, budget: int) -> tuple[float, float]:
        return t_interval(list(self.values[budget].values()))

    def seeds(self) -> list[int]:
        """Seeds present at every budget (the ones an AULC can be computed for)."""
        common = set.intersection(*(set(self.values[b]) for b in self.budgets))
        return sorted(common)


def curves(rows: Iterable[Mapping]) -> dict[tuple[str, str], dict[str, Curve]]:
    """(test_set, metric) → strategy → :class:`Curve`."""
    acc: dict[tuple[str, str], dict[str, dict[int, dict[int, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        acc[(r["test_set"], r["metric"])][r["strategy"]].setdefault(int(r["budget"]), {})[int(r["seed"])] = float(r["value"])
    return {
        key: {s: Curve(tuple(sorted(v)), v) for s, v in by_strategy.items()}
        for key, by_strategy in acc.items()
    }


def _strategy_order(names: Iterable[str], reference: str) -> list[str]:
    names = sorted(set(names))
    return ([reference] if reference in names else []) + [n for n in names if n != reference]


def _fmt(mean: float, half: float) -> str:
    digits = 2 if abs(mean) < 10 else 1
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def paired_aulc_ratio(curve: Curve, ref: Curve) -> tuple[float, float, int] | None:
    """Per-seed AULC ratio strategy / reference on their common seeds and budgets.

    Seeds of a comparison share the candidate pool, so strategies are compared seed by seed
    (a paired design). Returns (geometric mean ratio, half-width of the 95% interval of the
    mean log ratio, as a factor, n seeds) or None without a common seed.
    """
    budgets = sorted(set(curve.budgets) & set(ref.budgets))
    seeds = sorted(set.intersection(*(set(curve.values[b]) & set(ref.values[b]) for b in budgets))) if budgets else []
    if not seeds:
        return None
    logs = [
        math.log(aulc(budgets, [curve.values[b][s] for b in budgets]) / aulc(budgets, [ref.values[b][s] for b in budgets]))
        for s in seeds
    ]
    mean, half = t_interval(logs)
    return math.exp(mean), (math.exp(half) if not math.isnan(half) else math.nan), len(seeds)


def paired_efficiency(curve: Curve, ref: Curve, budget: int) -> tuple[float, float, float, int] | None:
    """Label efficiency at ``budget`` seed by seed: each seed's error against the same seed's reference curve.

    The seeds of a comparison share their candidates, so the efficiency is computed within each
    seed (:func:`label_efficiency` of the strategy's error on the reference's curve of that seed)
    and summarised as a geometric mean with its 95 % Student-t interval. A seed whose error lies
    outside the reference's measured range enters with the bound at the nearest end (its ratio
    is then at least, or at most, that value), which narrows the interval towards the range.

    Returns
    -------
    (geometric mean, lower, upper, n seeds) or None
        None when no seed has both curves at ``budget`` and at every reference budget.
    """
    if budget not in curve.values:
        return None
    seeds = sorted(set(curve.values[budget]) & set(ref.seeds()))
    if not seeds:
        return None
    logs = [math.log(label_efficiency(curve.values[budget][s], budget, list(ref.budgets),
                                      [ref.values[b][s] for b in ref.budgets]).ratio) for s in seeds]
    mean, half = t_interval(logs)
    if math.isnan(half):
        return math.exp(mean), math.nan, math.nan, len(seeds)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(seeds)


def summary_tables(rows: Sequence[Mapping], *, reference: str = "random", second: str | None = "fps",
                   level: int = 2) -> str:
    """Markdown: per test set, the learning curves of its MAEs, efficiencies and AULC.

    For each test set (force MAE first, then energy MAE, whichever it has): a table of mean ± 95%
    CI per strategy and budget; the label-efficiency ratio against ``reference`` (and against
    ``second`` when present) at each budget; the AULC with its CI across seeds and the paired
    AULC ratio against ``reference``, and a one-line verdict. ``level``: markdown heading level
    of the test-set headings.
    """
    lines: list[str] = []
    by_key = curves(rows)
    test_sets = sorted({k[0] for k in by_key})
    for test_set in test_sets:
        metrics = [m for m in HEADLINE if (test_set, m) in by_key]  # RMSEs: in results.csv
        lines.append(f"{'#' * level} {test_set}\n")
        for n_metric, metric in enumerate(metrics):
            cs = by_key[(test_set, metric)]
            names = _strategy_order(cs, reference)
            budgets = sorted({b for c in cs.values() for b in c.budgets})
            unit = UNITS.get(metric, "")
            lines.append(f"**{metric}** ({unit}; mean ± 95% CI over seeds)\n")
            lines.append("| strategy | " + " | ".join(f"k={b}" for b in budgets) + " | AULC | AULC / " + reference + " |")
            lines.append("|---|" + "---:|" * (len(budgets) + 2))
            for name in names:
                c = cs[name]
                cells = [_fmt(*c.interval(b)) if b in c.values else "–" for b in budgets]
                seeds = c.seeds()
                a = [aulc(c.budgets, [c.values[b][s] for b in c.budgets]) for s in seeds]
                a_cell = _fmt(*t_interval(a)) if a else "–"
                ratio = paired_aulc_ratio(c, cs[reference]) if reference in cs and name != reference else None
                r_cell = "–" if ratio is None else (
                    f"{ratio[0]:.2f}" + ("" if math.isnan(ratio[1]) else f" (×/÷ {ratio[1]:.2f})"))
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {a_cell} | {r_cell} |")
            lines.append("")
            if n_metric > 0:
                continue  # efficiency and verdict for the headline metric only
            for ref_name in (reference, second):
                if ref_name is None or ref_name not in cs:
                    continue
                ref = cs[ref_name]
                lines.append(f"Label efficiency vs {ref_name} ({ref_name} labels needed for the same "
                             f"{metric} / labels used; > 1 is better):\n")
                lines.append("| strategy | " + " | ".join(f"k={b}" for b in budgets) + " |")
                lines.append("|---|" + "---:|" * len(budgets))
                for name in names:
                    if name == ref_name:
                        continue
                    c = cs[name]
                    cells = []
                    for b in budgets:
                        if b not in c.values:
                            cells.append("–")
                            continue
                        cells.append(str(label_efficiency(float(np.mean(list(c.values[b].values()))), b,
                                                          ref.budgets, ref.mean())))
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
                lines.append("")
            lines.append(verdict(cs, metric, reference) + "\n")
    return "\n".join(lines)


def verdict(cs: Mapping[str, Curve], metric: str, reference: str = "random") -> str:
    """One sentence: the best strategy by AULC and whether it beats ``reference`` (paired CI)."""
    scored = []
    for name, c in cs.items():
        seeds = c.seeds()
        if seeds:
            scored.append((float(np.mean([aulc(c.budgets, [c.values[b][s] for b in c.budgets]) for s in seeds])), name))
    if not scored:
        return "No complete learning curve."
    scored.sort()
    best_value, best = scored[0]
    unit = UNITS.get(metric, "")
    if reference not in cs:
        return f"Lowest AULC ({metric}): **{best}** ({best_value:.3g} {unit})."
    if best == reference:
        return f"Lowest AULC ({metric}): **{reference}** ({best_value:.3g} {unit}): no strategy beat {reference}."
    ratio = paired_aulc_ratio(cs[best], cs[reference])
    if ratio is None:
        return f"Lowest AULC ({metric}): **{best}** ({best_value:.3g} {unit})."
    g, half, n = ratio
    if math.isnan(half):
        sig = "one seed only: no interval"
    elif g * half < 1:
        sig = f"better than {reference} beyond the 95% interval of the paired ratio (×/÷ {half:.2f}, {n} seeds)"
    else:
        sig = f"not distinguishable from {reference} at 95% (paired ratio ×/÷ {half:.2f}, {n} seeds)"
    return (f"Lowest AULC ({metric}): **{best}** ({best_value:.3g} {unit}), "
            f"{g:.2f}× {reference}'s — {sig}.")


def render_summary(results_csv: str | os.PathLike, *, title: str = "Strategy comparison",
                   header: str = "", reference: str = "random", second: str | None = "fps") -> str:
    """summary.md text rebuilt from a results.csv alone."""
    rows = read_results(results_csv)
    if not rows:
        raise InputError(f"{results_csv} holds no results")
    n_seeds = len({r["seed"] for r in rows})
    strategies = sorted({r["strategy"] for r in rows})
    budgets = sorted({r["budget"] for r in rows})
    intro = [f"# {title}\n"]
    if header:
        intro.append(header.rstrip() + "\n")
    intro.append(f"Strategies: {', '.join(strategies)}. Budgets: {', '.join(map(str, budgets))}. "
                 f"Seeds: {n_seeds}. Errors: energy in meV/atom, forces in meV/Å; "
                 f"mean ± 95% Student-t interval over seeds. AULC: geometric-mean error over the "
                 f"budget range (log–log trapezoid); its ratio to {reference} is paired by seed.\n")
    return "\n".join(intro) + "\n" + summary_tables(rows, reference=reference, second=second)


def plot_learning_curves(rows: Sequence[Mapping], out_dir: str | os.PathLike, *, reference: str = "random",
                         title_prefix: str = "") -> list[Path]:
    """One PNG per test set: log–log learning curves with 95% CI bands (energy and force MAE).

    Returns the files written (``learning_curve_<test set>.png``), each written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_key = curves(rows)
    written = []
    all_names = _strategy_order({s for cs in by_key.values() for s in cs}, reference)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(all_names)}
    for test_set in sorted({k[0] for k in by_key}):
        metrics = [m for m in ("energy_mae", "force_mae") if (test_set, m) in by_key]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            cs = by_key[(test_set, metric)]
            for name in _strategy_order(cs, reference):
                c = cs[name]
                mean = c.mean()
                half = np.array([c.interval(b)[1] for b in c.budgets])
                style = dict(color=colours[name], lw=2.4 if name == reference else 1.6,
                             ls="--" if name == reference else "-")
                ax.plot(c.budgets, mean, marker="o", ms=4, label=name, **style)
                if np.all(np.isfinite(half)):
                    lo = np.clip(mean - half, mean * 0.05, None)  # log axis: keep the band positive
                    ax.fill_between(c.budgets, lo, mean + half, color=colours[name], alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("labelled configurations")
            ax.set_ylabel(f"{metric.replace('_', ' ')} ({UNITS[metric]})")
            ax.grid(True, which="both", alpha=0.3)
            budgets = sorted({b for c in cs.values() for b in c.budgets})
            ax.set_xticks(budgets)
            ax.set_xticklabels([str(b) for b in budgets])
            ax.minorticks_off() if len(budgets) > 1 else None
        axes[0][0].legend(fontsize=8, frameon=False)
        fig.suptitle(f"{title_prefix}{test_set}", fontsize=11)
        fig.tight_layout()
        written.append(save_figure(fig, out / f"learning_curve_{_safe(test_set)}.png", dpi=110))
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def headline_table(rows: Sequence[Mapping], budget: int, columns: Sequence[tuple[str, str]], *,
                   reference: str = "random", efficiency_on: tuple[str, str] | None = None,
                   second: str | None = "fps") -> str:
    """Markdown: one row per strategy at one budget, one column per (test_set, metric).

    Cells are mean ± 95% CI over seeds; with ``efficiency_on`` = (test_set, metric), extra
    columns give the label-efficiency ratio against ``reference`` (and ``second``) there.
    """
    by_key = curves(rows)
    names = _strategy_order({s for key in columns if key in by_key for s in by_key[key]}, reference)
    head = ["strategy"] + [f"{t} {m.replace('_', ' ')} ({UNITS[m]})" for t, m in columns]
    refs = [r for r in (reference, second) if efficiency_on and r and r in by_key.get(efficiency_on, {})]
    head += [f"efficiency vs {r} ({efficiency_on[0]})" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in names:
        cells = []
        for key in columns:
            c = by_key.get(key, {}).get(name)
            cells.append(_fmt(*c.interval(budget)) if c is not None and budget in c.values else "–")
        for r in refs:
            cs = by_key[efficiency_on]
            c = cs.get(name)
            if name == r or c is None or budget not in c.values:
                cells.append("–")
                continue
            cells.append(str(label_efficiency(float(np.mean(list(c.values[budget].values()))), budget,
                                              cs[r].budgets, cs[r].mean())))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_panels(rows: Sequence[Mapping], path: str | os.PathLike, panels: Sequence[tuple[str, str]], *,
                reference: str = "random", title: str = "", ncols: int = 3) -> Path:
    """One figure, one log–log panel per (test_set, metric): mean and 95% CI band per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = curves(rows)
    panels = [p for p in panels if p in by_key]
    if not panels:
        raise InputError("none of the requested (test set, metric) panels has results")
    names = _strategy_order({s for p in panels for s in by_key[p]}, reference)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    nrows = math.ceil(len(panels) / ncols)
    ncols = min(ncols, len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.7 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (test_set, metric) in zip(axes.flat, panels):
        cs = by_key[(test_set, metric)]
        for name in names:
            if name not in cs:
                continue
            c = cs[name]
            mean = c.mean()
            half = np.array([c.interval(b)[1] for b in c.budgets])
            ax.plot(c.budgets, mean, marker="o", ms=3.5, label=name, color=colours[name],
                    lw=2.4 if name == reference else 1.5, ls="--" if name == reference else "-")
            if np.all(np.isfinite(half)):
                ax.fill_between(c.budgets, np.clip(mean - half, mean * 0.05, None), mean + half,
                                color=colours[name], alpha=0.12, lw=0)
        budgets = sorted({b for c in cs.values() for b in c.budgets})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(test_set, fontsize=10)
        ax.set_xlabel("labelled configurations", fontsize=9)
        ax.set_ylabel(f"{metric.replace('_', ' ')} ({UNITS[metric]})", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 5), 1, 1))
    return save_figure(fig, path, dpi=110)
