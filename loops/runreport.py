"""The Markdown report of a loop's run directory (``oed loop report``), with its figures.

Reads only what :func:`loops.runview.open_run` gives (:class:`~loops.runview.RunView`): the
rounds with their errors and phase times, the exploration summaries, the stop record and the
failed labels. Writes the report and its PNGs beside the path the user names, nothing into the
run directory unless that path is there.

Units: errors in meV/Å (forces) and meV/atom (energies), times in s.
"""

from __future__ import annotations

import os
from pathlib import Path

from loops.runview import RunView, failures, phase_names, round_rows

__all__ = ["render_report"]


def _records(view: RunView) -> list[dict]:
    """Finished rounds: results.json, else the cells (a run killed before its first results)."""
    if view.results:
        return sorted(view.results, key=lambda x: int(x["round"]))
    return [view.cells[r] for r in sorted(view.cells)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fig_uncertainty(explore: dict[int, dict], png: Path) -> bool:
    import numpy as np

    rounds = [r for r in sorted(explore) if explore[r].get("uncertainty_values")]
    if not rounds:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
    values = np.concatenate([np.asarray(explore[r]["uncertainty_values"], dtype=float) for r in rounds])
    lo = min(float(explore[r]["trust_lo"]) for r in rounds)
    hi = max(float(explore[r]["trust_hi"]) for r in rounds)
    top = max(float(values.max()), hi)
    positive = values[values > 0]
    log = len(positive) == len(values) and top / positive.min() > 20
    bins = np.geomspace(positive.min(), top, 40) if log else np.linspace(min(0.0, values.min()), top, 40)
    cmap = plt.get_cmap("viridis")
    for j, r in enumerate(rounds):
        ax.hist(explore[r]["uncertainty_values"], bins=bins, histtype="step", lw=1.5,
                color=cmap(j / max(len(rounds) - 1, 1)), label=f"round {r}")
    for x, what in ((lo, "trust_lo"), (hi, "trust_hi")):
        ax.axvline(x, color="k", ls="--" if what == "trust_lo" else ":", lw=1)
        ax.text(x, 0.97, f" {what} " if what == "trust_lo" else f"{what} ", transform=ax.get_xaxis_transform(),
                va="top", ha="left" if what == "trust_lo" else "right", fontsize=8)
    if log:
        ax.set_xscale("log")
    kind = explore[rounds[-1]].get("uncertainty", "uncertainty")
    unit = explore[rounds[-1]].get("unit") or ""
    ax.set_xlabel(f"{kind}" + (f" ({unit})" if unit else ""))
    ax.set_ylabel("explored frames")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    from oed.plots import save_figure

    save_figure(fig, png)
    return True


def _stop_table(explore: dict[int, dict]) -> tuple[list[str], dict[int, dict[str, int]]]:
    counts, reasons = {}, []
    for r in sorted(explore):
        c: dict[str, int] = {}
        for t in explore[r].get("trajectories", []):
            why = t.get("stopped") or "ran to the end"
            c[why] = c.get(why, 0) + 1
            if why not in reasons:
                reasons.append(why)
        counts[r] = c
    order = ["ran to the end", "trust-hi", "bond", "fragments", "close-contact", "energy"]
    return sorted(reasons, key=lambda x: order.index(x) if x in order else len(order)), counts


def _stacked(data: dict[int, dict[str, float]], keys: list[str], ylabel: str, png: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), constrained_layout=True)
    rounds = sorted(data)
    bottom = [0.0] * len(rounds)
    for j, k in enumerate(keys):
        h = [float(data[r].get(k, 0.0)) for r in rounds]
        ax.bar([str(r) for r in rounds], h, bottom=bottom, label=k, color=f"C{j}")
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    if ylabel == "trajectories":
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    from oed.plots import save_figure

    save_figure(fig, png)


def _md_table(rows: list[str], cols: list[str]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows]


def _convergence(view: RunView) -> list[str]:
    explored = [r for r in sorted(view.explore)]
    if not explored:
        return ["Not measured: this run picks from a fixed pool and did not explore with MD, so there is no "
                "exploration to be free of uncertain frames (run with `--explore md`)."]
    r = explored[-1]
    e = view.explore[r]
    lo, steps, dt = float(e["trust_lo"]), int(e["md_steps"]), float(e["timestep_fs"])
    temps = ", ".join(f"{t:g}" for t in e["temperatures"])
    unit = f" {e['unit']}" if e.get("unit") else ""
    n_traj = len(e.get("trajectories", []))
    where = (f"round {r}'s exploration ({n_traj} trajectories of {steps} steps × {dt:g} fs = {steps * dt:g} fs "
             f"at {temps} K, {e['n_frames']} graded frames, uncertainty {e['uncertainty']})")
    values = e.get("uncertainty_values") or []
    above = int(e.get("n_above_lo", sum(v >= lo for v in values)))
    stops = {k: v for k, v in _stop_table({r: e})[1][r].items() if k != "ran to the end"}
    if above == 0 and not stops:
        return [f"**Yes**, at this length and these temperatures: {where} found no frame at or above "
                f"trust_lo = {lo:g}{unit}" + (f" (largest {max(values):.3g}{unit})." if values else ".")
                + " Longer or hotter MD may still find uncertain frames."]
    why = []
    if above:
        why.append(f"{above} of {e['n_frames']} frames were at or above trust_lo = {lo:g}{unit}"
                   + (f" (largest {max(values):.3g}{unit})" if values else ""))
    if stops:
        why.append("trajectories stopped: " + ", ".join(f"{v} × {k}" for k, v in sorted(stops.items())))
    return [f"**No**: in {where}, " + "; ".join(why) + "."]


def render_report(view: RunView, path: str | os.PathLike) -> Path:
    """Write a Markdown report of the run to ``path`` (atomically), its PNGs beside it.

    Sections: rounds (labels, candidates, headline errors), learning curve per test set,
    exploration (uncertainty histograms of the explored frames per round with the trust levels,
    where trajectories stopped), time per phase, failed labels with their reasons, "Is the
    model converged?" (yes when the last exploration had no frame at or above trust_lo and no
    trajectory stopped, with its length and temperatures) and MD stability when the results
    carry it. Figures are named ``<report stem>_<what>.png``. Returns ``path``.
    """
    from oed.io import atomic_write_text

    path = Path(path)
    stem = path.with_suffix("")
    rows, records = round_rows(view), _records(view)
    n_ok, failed = sum(lab.ok for lab in view.labels), failures(view)
    c = view.config
    state = f"running (PID {view.pid})" if view.pid else (
        f"stopped: {view.stop['reason']} ({view.stop.get('detail', '')})" if view.stop else "not running")
    md = [f"# Active-learning run `{view.out}`", "",
          f"- campaign: {view.campaign()}; oracle: `{c.get('oracle', '?')}`; model: {c.get('model', '?')}",
          f"- {n_ok} labels, {len(failed)} failed (from {view.labels_from}); {len(rows)} rounds; {state}", "",
          "## Rounds", ""]
    tests = sorted({n for row in rows for n in row["errors"]})
    cols = ["round", "state", "trained on (new labels)", "failed", "candidates"] + [
        f"{n} {'F-MAE meV/Å' if any(row['errors'].get(n, ('',))[0] == 'force_mae' for row in rows) else 'E-MAE meV/atom'}"
        for n in tests]
    md += _md_table([
        "| " + " | ".join([str(row["round"]), row["state"],
                           f"{row['n_labelled'] if row['n_labelled'] is not None else '–'} ({row['labels']})",
                           str(row["failed"]), "–" if row["candidates"] is None else str(row["candidates"])]
                          + [f"{row['errors'][n][1]:.2f}" if n in row["errors"] else "–" for n in tests]) + " |"
        for row in rows], cols)
    md += ["", "## Learning curve", ""]
    if records:
        from loops.plots import plot_learning_curve

        plot_learning_curve(records, Path(f"{stem}_learning_curve.png"), title=view.campaign())
        md += [f"![learning curve]({stem.name}_learning_curve.png)", "",
               "Force MAE (meV/Å) and energy MAE (meV/atom) per test set (and per config_type within one) "
               "against the labels each round's model was trained on."]
    else:
        md += ["No round has been scored yet."]
    if view.explore:
        md += ["", "## Exploration", ""]
        if _fig_uncertainty(view.explore, Path(f"{stem}_uncertainty.png")):
            md += [f"![uncertainty]({stem.name}_uncertainty.png)", "",
                   "Uncertainty of every graded frame of each round's MD; frames between trust_lo (dashed) and "
                   "trust_hi (dotted) are candidates, a trajectory stops at trust_hi.", ""]
        reasons, counts = _stop_table(view.explore)
        _stacked({r: {k: float(v) for k, v in cnt.items()} for r, cnt in counts.items()}, reasons,
                 "trajectories", Path(f"{stem}_stops.png"))
        md += [f"![where trajectories stopped]({stem.name}_stops.png)", ""]
        md += _md_table([f"| {r} | " + " | ".join(str(e.get(k, "–")) for k in
                                                   ("n_frames", "n_candidates", "n_above_lo", "converged"))
                         + f" | {float(e.get('seconds', 0)):.0f} | " + " | ".join(str(counts[r].get(k, 0))
                                                                                  for k in reasons) + " |"
                         for r, e in sorted(view.explore.items())],
                        ["round", "frames", "candidates", "≥ trust_lo", "converged", "MD s"] + reasons)
    md += ["", "## Time per phase", ""]
    names = phase_names(rows)
    if names:
        _stacked({row["round"]: row["seconds"] for row in rows}, names, "wall time (s)", Path(f"{stem}_phases.png"))
        md += [f"![time per phase]({stem.name}_phases.png)", ""]
        md += _md_table([f"| {row['round']} | " + " | ".join(f"{row['seconds'][p]:.1f}" if p in row["seconds"]
                                                             else "–" for p in names) + " |" for row in rows],
                        ["round"] + [f"{p} (s)" for p in names])
        if rows and rows[0]["times_from"] == "files":
            md += ["", "No phase journal (an older run): label time is the sum over labels (CPU-time-like when "
                   "several workers label at once); fit and evaluate times are those of the cells."]
    else:
        md += ["No timings recorded yet."]
    md += ["", "## Failed labels", ""]
    if failed:
        md += _md_table([f"| {lab.round} | {lab.pool_index} | `{lab.key}` | "
                         + str(lab.error or "").replace("|", "\\|").replace("\n", " ") + " |" for lab in failed],
                        ["round", "pool index", "structure hash", "reason"])
    else:
        md += ["None." if view.stored else
               f"Not recorded ({view.labels_from}: a replayed pool keeps only counts, see the rounds table)."]
    md += ["", "## Is the model converged?", "", *_convergence(view)]
    from loops.refine import report_section

    md += report_section(records)
    stab = [rec for rec in records if rec.get("md_stability")]
    if stab:
        md += ["", "## MD stability", "", "NVT (Langevin) MD from test geometries with each round's model: time to "
               "the first physical failure (a trajectory that never fails counts at its full length).", ""]
        md += _md_table([
            f"| {rec['round']} | {rec['n_labelled']} | {s.get('temperature_K', 0):g} | {s.get('steps', '–')} × "
            f"{s.get('timestep_fs', 0):g} | {s.get('mean_fs') or 0:.0f} ± {s.get('std_fs') or 0:.0f} | "
            f"{s.get('survived', '–')}/{s.get('n', '–')} | "
            + (", ".join(f"{v} × {k}" for k, v in sorted(s.get("stopped", {}).items())) or "–") + " |"
            for rec in stab for s in [rec["md_stability"]]],
            ["round", "labels", "T (K)", "steps × fs", "time to failure (fs)", "survived", "stopped"])
    atomic_write_text(path, "\n".join(md) + "\n")
    return path
