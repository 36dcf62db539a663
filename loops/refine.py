"""Test-time refinement when a cell is scored: radius refinement and test-time training, side by side.

``oed compare … --radius-refinement --ttt`` (and ``oed loop run``) score every fitted model three
ways on each test file: as trained (``none``), and through each refinement asked for. Neither uses
a reference label of a test configuration (Kreiman & Krishnapriyan, arXiv:2503.08674):

- ``radius`` — per test configuration, the graph radius among :data:`RADIUS_FRACTIONS` of the
  model's cut-off whose normalised-Laplacian spectrum is nearest a training graph
  (:func:`oed.shift.refined_radii`, training graphs from the cell's own training set), then
  ``model.predict(frames, cutoffs=radii)``. Needs a radius-graph model whose ``predict`` takes
  ``cutoffs`` (MACE).
- ``ttt`` — test-time training on a cheap prior (:meth:`loops.ttt.TTTMACEModel.predict_ttt`):
  the two-head MACE ``mace-ttt`` takes Adam steps on its GFN2-xTB head's loss for the test
  configurations, then predicts with its DFT head. Its ``none`` rows are that same model's DFT
  head without the steps, so the two are paired.

A cell record gains ``refined: {refinement: {test_set: metrics}}``; :func:`loops.cells.collect_rows`
turns it into rows with a ``refinement`` column.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from oed.errors import InputError

__all__ = ["RADIUS_FRACTIONS", "REFINEMENTS", "check_refinements", "refined_predictor", "refinement_table",
           "report_section"]

REFINEMENTS = ("radius", "ttt")
#: Candidate graph radii of radius refinement, as fractions of the model's cut-off (5 Å → 5.0 … 3.0 Å).
RADIUS_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6)


def check_refinements(model: str, refinements: Sequence[str]) -> None:
    """Refuse refinements that are unknown, repeated, or that the model ``model`` cannot do.

    Raises
    ------
    InputError
        Naming the refinement and what it needs.
    """
    from loops.models import model_class

    unknown = [r for r in refinements if r not in REFINEMENTS]
    if unknown:
        raise InputError(f"unknown refinement(s) {', '.join(unknown)}: choose from {', '.join(REFINEMENTS)}")
    if len(set(refinements)) != len(refinements):
        raise InputError(f"refinements repeated: {', '.join(refinements)}")
    cls = model_class(model)
    if "radius" in refinements and "cutoffs" not in inspect.signature(cls.predict).parameters:
        raise InputError(f"radius refinement needs a radius-graph model whose predict takes cutoffs "
                         f"(mace, mace-ttt); {model!r} does not")
    if "ttt" in refinements and not hasattr(cls, "predict_ttt"):
        raise InputError(f"test-time training needs the two-head model mace-ttt (a DFT and a GFN2-xTB head); "
                         f"{model!r} has no prior head")


class _Refined:
    """A ``predict(frames)`` that refines (all :func:`loops.evaluate.evaluate_groups` calls)."""

    def __init__(self, predict) -> None:
        self.predict = predict


def refined_predictor(model, refinement: str, train: Sequence[Atoms]) -> _Refined:
    """An object whose ``predict(frames)`` returns the refined energies (eV, (n,)) and forces (eV/Å).

    Parameters
    ----------
    model
        A fitted model (MACE for ``radius``, ``mace-ttt`` for ``ttt``).
    refinement : {"radius", "ttt"}
    train : sequence of ase.Atoms
        The model's training configurations (radius refinement's reference graphs).

    Raises
    ------
    InputError
        An unknown refinement, or one the model cannot do.
    """
    if refinement == "ttt":
        if not hasattr(model, "predict_ttt"):
            raise InputError("test-time training needs the two-head model mace-ttt")
        return _Refined(model.predict_ttt)
    if refinement != "radius":
        raise InputError(f"unknown refinement {refinement!r}: choose from {', '.join(REFINEMENTS)}")
    from oed.shift import ShiftDiagnostics, refined_radii

    settings = model.settings if model.settings is not None else model.settings_class()
    cutoff = float(settings.r_max)
    diagnostics = ShiftDiagnostics(cutoff=cutoff).fit(list(train))
    candidates = [cutoff * f for f in RADIUS_FRACTIONS]

    def predict(frames):
        frames = list(frames)
        return model.predict(frames, cutoffs=refined_radii(diagnostics, frames, candidates))

    return _Refined(predict)


def refinement_table(rows: Sequence[dict], metric: str = "force_mae") -> str:
    """Markdown: ``metric`` as trained and after each refinement, with the paired change, per test set,
    strategy and budget (rows as :func:`loops.report.read_results` with ``refinement=None``).

    The change is (refined − none) / none per seed, then its mean ± 95 % Student-t half-width;
    "" when no row has a refinement other than ``none``.
    """
    from loops.report import t_interval

    kinds = [k for k in REFINEMENTS if any(r.get("refinement") == k and r["metric"] == metric for r in rows)]
    if not kinds:
        return ""
    value: dict = {}
    for r in rows:
        if r["metric"] == metric:
            value[(r["test_set"], r["strategy"], int(r["budget"]), r.get("refinement", "none"), int(r["seed"]))] = \
                float(r["value"])
    cells = sorted({k[:3] for k in value if k[3] == "none"})
    unit = "meV/Å" if metric.startswith("force") else "meV/atom"
    lines = ["", f"## Test-time refinement ({metric.replace('_', ' ')}, {unit})", "",
             "The same fitted model scored as trained (*none*) and through each refinement, with no reference label "
             "of a test configuration: *radius*, per configuration the graph radius whose Laplacian spectrum is "
             "nearest a training graph; *ttt*, test-time training on the GFN2-xTB head (loops.refine). Change: "
             "(refined − none) / none, paired by seed; mean ± 95 % interval.", "",
             "| test set | strategy | budget | none | " + " | ".join(f"{k} | change" for k in kinds) + " |",
             "|---|---|---:|---:|" + "---:|---:|" * len(kinds)]

    def fmt(vals):
        mean, half = t_interval(vals)
        return f"{mean:.3g}" + ("" if not np.isfinite(half) else f" ± {half:.2g}")

    for test_set, strategy, budget in cells:
        seeds = sorted(s for (t, st, b, k, s) in value if (t, st, b, k) == (test_set, strategy, budget, "none"))
        base = {s: value[(test_set, strategy, budget, "none", s)] for s in seeds}
        out = [test_set, strategy, str(budget), fmt(list(base.values()))]
        for k in kinds:
            got = {s: value[(test_set, strategy, budget, k, s)] for s in seeds if (test_set, strategy, budget, k, s) in value}
            if not got:
                out += ["–", "–"]
                continue
            change = [100.0 * (got[s] - base[s]) / base[s] for s in got if base[s] > 0]
            mean, half = t_interval(change) if change else (float("nan"), float("nan"))
            out += [fmt(list(got.values())), f"{mean:+.1f} %" + ("" if not np.isfinite(half) else f" ± {half:.1f}")]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def report_section(records: Sequence[dict]) -> list[str]:
    """Markdown lines of a loop report: each round's errors as trained and after each refinement
    (records as ``results.json`` rounds, with ``refined``); [] when no round was refined."""
    refined = [rec for rec in records if rec.get("refined")]
    if not refined:
        return []
    kinds = [k for k in REFINEMENTS if any(k in rec["refined"] for rec in refined)]
    lines = ["", "## Test-time refinement", "",
             "Each round's model scored as trained and through each refinement, with no reference label of a test "
             "configuration (loops.refine); force MAE in meV/Å (energy MAE in meV/atom where a set has no forces), "
             "change relative to *none*.", "",
             "| round | labels | test set | none | " + " | ".join(kinds) + " |", "|---:|---:|---|---:|" + "---:|" * len(kinds)]
    for rec in refined:
        for test_set, metrics in rec["errors"].items():
            metric = "force_mae" if "force_mae" in metrics else "energy_mae"
            if metric not in metrics:
                continue
            base = float(metrics[metric])
            cells = []
            for k in kinds:
                got = rec["refined"].get(k, {}).get(test_set, {}).get(metric)
                cells.append("–" if got is None else
                             f"{float(got):.1f} ({100.0 * (float(got) - base) / base:+.1f} %)" if base else f"{float(got):.1f}")
            label = test_set + ("" if metric == "force_mae" else " (energy)")
            lines.append(f"| {rec['round']} | {rec.get('n_labelled', '–')} | {label} | {base:.1f} | " + " | ".join(cells) + " |")
    return lines
