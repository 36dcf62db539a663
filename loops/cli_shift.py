"""``oed shift``: is a test set unlike the training set, and how? (registered on :data:`loops.cli.app`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from loops.cli import _clean_errors, _parse_workers, app, err, out
from loops.rundir import check_output_file


@app.command()
@_clean_errors
def shift(
    train: Annotated[Path, typer.Argument(metavar="TRAIN.xyz", help="Training configurations (extxyz).")],
    tests: Annotated[list[Path], typer.Argument(metavar="TEST.xyz...", help="One or more test files (extxyz).")],
    forces: Annotated[str, typer.Option(
        "--forces", help="Force norms for the force-norm shift: gfn2-xtb or gfn1-xtb (computed for both train "
        "and test, so like is compared with like), labels (the files' REF_forces), or none.")] = "gfn2-xtb",
    cutoff: Annotated[float, typer.Option("--cutoff", help="Radius-graph cut-off in Å (the model's cut-off).")] = 5.0,
    n_sigma: Annotated[float, typer.Option(
        "--n-sigma", help="Flag values more than this many training standard deviations above the training mean.")] = 1.0,
    workers: Annotated[Optional[int], typer.Option(help="Processes for the xTB force norms (default: one per core).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write the diagnostics per file (PNG).")] = None,
) -> None:
    """Distribution-shift diagnostics of test files against a training file, before any label.

    Per configuration (Kreiman & Krishnapriyan, arXiv:2503.08674):

    feature: SOAP distance to the nearest training environment of the same element (max over
    atoms; inf for an unseen element), and the extrapolation grade γ (flagged above 2);

    force_norm: mean atomic |F| of a cheap prior (GFN2-xTB) against the training set's;

    connectivity: Wasserstein-1 distance of the normalised-Laplacian spectrum of the radius graph
    to the nearest training graph.

    A value is flagged when it lies more than --n-sigma training standard deviations above the
    training mean (distances: leave-one-out among training configurations). Example:

    oed shift "$(oed data ethanol/train.xyz)" "$(oed data ethanol/test_MD.xyz)" --plot shift.png
    """
    from loops.shift import shift_report
    from oed.plots import plot_shift

    if plot is not None:
        check_output_file(plot, what="--plot")
    with err.status(f"shift diagnostics of {len(tests)} file(s) against {train.name}"):
        report, results = shift_report(train, tests, forces=forces, cutoff=cutoff, n_sigma=n_sigma,
                                       workers=_parse_workers(workers))
    if plot is not None:
        plot_shift(results, plot, title=f"shift against {train.name} ({report['n_train']} configurations)")
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    diags = [d for d in ("feature", "gamma", "force_norm", "connectivity") if d in report["thresholds"]]
    table = Table(title=f"configurations flagged as shifted from {train.name} ({report['n_train']} configurations)")
    table.add_column("file")
    table.add_column("n", justify="right")
    for d in diags:
        table.add_column(d, justify="right")
    table.add_column("any", justify="right")
    for name, f in report["files"].items():
        fr = f["flagged_fraction"]
        table.add_row(name, str(f["n"]), *(f"{100 * fr[d]:.0f}%" for d in diags), f"{100 * fr['any']:.0f}%")
    out.print(table)
    th = report["thresholds"]
    out.print("thresholds: " + ", ".join(f"{d} > {th[d]:.3g}" for d in diags if th.get(d) is not None))
    if plot is not None:
        out.print(f"plot written to {plot}")
