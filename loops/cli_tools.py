"""The ``oed loop`` commands that read a run directory: status, export, report.

Registered on :data:`loops.cli.loop_app`; each only reads the run (:mod:`loops.runview`), so it
is safe on a run that is going on or one that was killed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from loops.cli import ForceOpt, _clean_errors, err, loop_app, out
from loops.rundir import check_output_file

RunDir = Annotated[Path, typer.Argument(metavar="DIR", help="Run directory of `oed loop run` (its --out).")]


def _status_table(view, rows) -> Table:
    from loops.runview import phase_names

    tests = sorted({n for row in rows for n in row["errors"]})
    kinds = {n: next(row["errors"][n][0] for row in rows if n in row["errors"]) for n in tests}
    phases = phase_names(rows)
    table = Table(title=f"{view.out}: {view.campaign()}")
    for name, justify in (("round", "right"), ("phase", "left"), ("labels\nok/failed", "right"),
                          ("trained\non", "right"), ("cand-\nidates", "right")):
        table.add_column(name, justify=justify)
    for n in tests:
        table.add_column(f"{n}\n{'F-MAE meV/Å' if kinds[n] == 'force_mae' else 'E-MAE meV/atom'}", justify="right")
    for p in phases:
        table.add_column(f"{p}\ns", justify="right")
    for row in rows:
        state = row["state"]
        style = "green" if state == "done" else "red" if state.startswith(("failed", "stopped")) else "yellow"
        cells = [str(row["round"]), f"[{style}]{state}[/]", f"{row['labels']}/{row['failed']}",
                 "–" if row["n_labelled"] is None else str(row["n_labelled"]),
                 "–" if row["candidates"] is None else str(row["candidates"])]
        cells += [f"{row['errors'][n][1]:.1f}" if n in row["errors"] else "–" for n in tests]
        cells += [("–" if p not in row["seconds"] else f"{row['seconds'][p]:.1f}" + ("…" if row["running"] == p else ""))
                  for p in phases]
        table.add_row(*cells)
    return table


@loop_app.command("status")
@_clean_errors
def loop_status(run_dir: RunDir) -> None:
    """Where a run stands: one row per round (safe while it runs, or after it was killed).

    Columns: round; phase — "done", "running: <phase>" (a live run is in it), "stopped in
    <phase>" (it started and never ended: the run was killed there), "stopped after <phase>",
    "failed in <phase>" (with the error in the journal), "converged" (the round's MD found no
    uncertain frame, so the run ended); labels ok/failed — configurations labelled in that round
    and those that failed (never relabelled, see `oed loop report`); trained on — labels the
    round's model was fitted on; candidates — explored MD frames between the trust levels
    ("–" for a pool round); one column per test set with the headline error, force MAE in
    meV/Å (energy MAE in meV/atom where a set has no forces); and the wall time of each phase
    (explore, select, label, fit, evaluate) in seconds, "…" while it runs. The phases come from
    DIR/phases.jsonl; a run without it (older runs) is read from labels.db and the cells
    (label time then sums the labels' own times).
    """
    from loops.runview import open_run, round_rows

    view = open_run(run_dir)
    rows = round_rows(view)
    if not rows:
        out.print(f"{run_dir}: a run directory with no round started yet")
        return
    # The table's width is read now, not when the module was imported: COLUMNS, else the
    # terminal, else 200 columns when piped, so that a file gets every column untruncated.
    import shutil

    from rich.console import Console

    Console(width=shutil.get_terminal_size((200, 24)).columns).print(_status_table(view, rows))
    n_ok = sum(lab.ok for lab in view.labels)
    state = (f"running (PID {view.pid})" if view.pid else
             f"stopped: {view.stop['reason']} — {view.stop.get('detail', '')}" if view.stop else "not running")
    out.print(f"{n_ok} labels, {len(view.labels) - n_ok} failed ({view.labels_from}); oracle "
              f"{view.config.get('oracle', '?')}; {state}", highlight=False, soft_wrap=True)


@loop_app.command("export")
@_clean_errors
def loop_export(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="extxyz file to write.")],
    force: ForceOpt = False,
) -> None:
    """Every successful label of a run as one extxyz file (for fitting elsewhere).

    Each configuration has REF_energy (eV) and REF_forces (eV/Å); config_type (the pool's own,
    else explore_round<r> for an MD frame the loop found, seed for a seed geometry, pool
    otherwise); oed_round (the round it was labelled in) and oed_pool_index; level_of_theory;
    label_seconds and what the labeller stored (SCF route, ⟨S²⟩); and for an explored frame the
    uncertainty it had when it was selected (uncertainty, unit per uncertainty_kind: gamma
    dimensionless, gap-variance eV/atom, committee eV/Å) and its MD temperature (K). Failed
    labels are left out and counted. The file is written atomically.
    """
    from loops.runview import export_labels, open_run

    check_output_file(output, what="--output", force=force)
    view = open_run(run_dir)
    n, failed = export_labels(view, output)
    out.print(f"wrote {n} labels to {output}; {failed} failed label{'s' if failed != 1 else ''} left out",
              highlight=False, soft_wrap=True)


@loop_app.command("report")
@_clean_errors
def loop_report(
    run_dir: RunDir,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Markdown file (default DIR/report.md); PNGs are written beside it.")] = None,
    force: ForceOpt = False,
) -> None:
    """A Markdown report of a run, with figures (PNG, beside it).

    Sections: the rounds (labels, failures, candidates, headline errors: force MAE meV/Å or
    energy MAE meV/atom); the learning curve per test set; for an exploring run the uncertainty
    histograms of each round's explored frames with trust_lo/trust_hi drawn, and where
    trajectories stopped (trust-hi, bond, fragments, close-contact, energy) per round; wall time
    per phase (s, stacked); the failed labels with their reasons; "Is the model converged?" —
    yes when the last exploration found no frame at or above trust_lo and no trajectory
    stopped (its MD length and temperatures stated), else no and why; and MD stability (time
    to the first physical failure) when the run measured it. Works on a run that is not
    finished: it reports what is there. DIR/report.md is rewritten each time; another
    --output is not overwritten without --force.
    """
    from loops.runreport import render_report
    from loops.runview import open_run

    view = open_run(run_dir)
    target = Path(run_dir) / "report.md" if output is None else output
    check_output_file(target, what="--output", force=force or output is None)
    path = render_report(view, target)
    err.print(f"report of {len(view.rounds())} rounds", highlight=False)
    out.print(str(path), highlight=False, soft_wrap=True)
