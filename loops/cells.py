"""Cells: one model fitted on one campaign's picks at one budget, scored on every test set.

A cell is the unit of work and of record of every campaign (:mod:`loops.campaign`): a loop
round, a comparison's (strategy, seed, budget). :func:`run_cell` fits and scores a
:class:`CellTask` (picklable: it runs in worker processes) and writes
``cells/<strategy>/seed<s>/k<budget>.json`` atomically; :func:`read_cell` reads it back, and
:func:`collect_rows` turns finished cells into tidy rows (strategy, seed, budget, test_set,
metric, value) — energy errors in meV/atom, force errors in meV/Å.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from loops.errors import RunMismatchError
from oed.io import atomic_write_text, read_structures

__all__ = ["CellTask", "cell_path", "collect_rows", "load_test", "read_cell", "run_cell", "score", "subsample"]

METRICS = ("energy_mae", "energy_rmse", "force_mae", "force_rmse")


def subsample(frames: list, limit: int | None) -> list:
    """At most ``limit`` frames of each ``config_type``, evenly spaced (all when ``limit`` is None).

    Per config_type, so that a small group (145 methanol among 1000 ethanol) keeps its share.
    """
    if limit is None:
        return frames
    groups: dict[str, list[int]] = {}
    for i, atoms in enumerate(frames):
        groups.setdefault(str(atoms.info.get("config_type", "")), []).append(i)
    keep = []
    for idx in groups.values():
        if len(idx) > limit:
            idx = [idx[j] for j in np.linspace(0, len(idx) - 1, limit).round().astype(int)]
        keep += idx
    return [frames[i] for i in sorted(keep)]


@functools.lru_cache(maxsize=16)
def _read_test(path: str, limit: int | None, mtime: float) -> tuple[Atoms, ...]:
    # One read per worker process and file; mtime in the key so an edited file is re-read.
    return tuple(subsample(read_structures(path, what="test set"), limit))


def load_test(path: str | os.PathLike, limit: int | None) -> list[Atoms]:
    """A test file's configurations (cached per process), subsampled to ``limit``."""
    p = Path(path)
    return list(_read_test(str(p.resolve()), limit, p.stat().st_mtime if p.exists() else 0.0))


def score(model, tests: Mapping[str, str], limit: int | None) -> dict[str, dict]:
    """Errors of a fitted model on every test file, and per ``config_type`` within a file.

    Returns ``{test_set: metrics}`` with test_set ``<file stem>`` and ``<file stem>:<config_type>``
    (metrics as :func:`loops.evaluate.error_metrics`: meV/atom, meV/Å).
    """
    from loops.evaluate import evaluate_groups

    out = {}
    for name, path in tests.items():
        for group, metrics in evaluate_groups(model, load_test(path, limit)).items():
            out[name if group is None else f"{name}:{group}"] = metrics
    return out


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to fit and score one cell (picklable).

    ``model_seed`` None keeps the seed in ``settings``; an int is written into them
    (:func:`loops.models.make_model`). ``round`` is the campaign round the cell closes.
    """

    strategy: str
    seed: int
    budget: int
    train_idx: tuple[int, ...]
    n_failed: int
    train: tuple[Atoms, ...]
    model: str
    settings: Any
    e0s: dict
    tests: dict
    test_limit: int | None
    out: str
    keep_models: bool
    model_seed: int | None = None
    round: int = 0
    md_stability_steps: int = 0
    refinements: tuple[str, ...] = ()

    @property
    def workdir(self) -> Path:
        """Where the fit writes its files."""
        return Path(self.out) / "models" / self.strategy / f"seed{self.seed}" / f"k{self.budget}"

    def make_model(self):
        from loops.models import make_model

        return make_model(self.model, self.settings, seed=self.model_seed)


def cell_path(out: Path, strategy: str, seed: int, budget: int) -> Path:
    """``out/cells/<strategy>/seed<seed>/k<budget>.json``."""
    return Path(out) / "cells" / strategy / f"seed{seed}" / f"k{budget}.json"


def run_cell(task: CellTask, fitted=None) -> dict:
    """Fit (unless ``fitted`` is given) and score one cell; writes its JSON atomically.

    Returns
    -------
    dict
        strategy, seed, round, budget, train (pool indices), n_labelled, n_failed, fit_seconds,
        score_seconds and errors {test_set: metrics}.
    """
    t0 = time.perf_counter()
    model = fitted
    if model is None:
        model = task.make_model()
        model.fit(list(task.train), e0s=task.e0s, workdir=task.workdir)
    t1 = time.perf_counter()
    errors = score(model, task.tests, task.test_limit)
    refined = {}
    if task.refinements:
        from loops.refine import refined_predictor

        t2 = time.perf_counter()
        for refinement in task.refinements:  # the same fitted model, scored through each refinement
            refined[refinement] = score(refined_predictor(model, refinement, task.train), task.tests, task.test_limit)
        refine_seconds = round(time.perf_counter() - t2, 2)
    record = {
        "strategy": task.strategy,
        "seed": task.seed,
        "round": task.round,
        "budget": task.budget,
        "train": list(task.train_idx),
        "n_labelled": len(task.train),
        "n_failed": task.n_failed,
        "fit_seconds": round(t1 - t0, 2),
        "score_seconds": round(time.perf_counter() - t1, 2),
        "errors": errors,
    }
    if refined:
        record["refined"] = refined
        record["refine_seconds"] = refine_seconds
    if task.md_stability_steps:
        record["md_stability"] = stability(model, task.tests, task.md_stability_steps)
    if hasattr(model, "predict_uncertainty"):
        record["calibration"] = calibrate(model, task)
    atomic_write_text(cell_path(Path(task.out), task.strategy, task.seed, task.budget), json.dumps(record, indent=1))
    if fitted is None and not task.keep_models:
        from loops.fitting import remove_fit_dir

        remove_fit_dir(task.workdir)  # a fit's files are large; the errors are kept (leftovers are warned about)
    return record


def calibrate(model, task: CellTask) -> dict:
    """A committee's σ_F against its true force error on the first test file with forces (Spearman ρ,
    binned curve; :func:`loops.calibration.committee_calibration`), plotted beside the cell record."""
    from loops.calibration import committee_calibration, plot_calibration
    from oed.io import reference_forces

    for name, path in task.tests.items():
        frames = [a for a in load_test(path, task.test_limit) if reference_forces(a) is not None]
        if len(frames) >= 3:
            break
    else:
        return {}
    result = committee_calibration(model, frames)
    plot = cell_path(Path(task.out), task.strategy, task.seed, task.budget).with_suffix(".calibration.png")
    plot_calibration(result["sigma"], result["error"], plot,
                     title=f"{task.strategy}, k={task.budget}: committee σ_F vs error on {name}")
    return {"test_set": name, "spearman": result["spearman"], "n": result["n"], "scale": result["scale"],
            "bins": result["bins"], "plot": plot.name}


def stability(model, tests: Mapping[str, str], steps: int, temperature: float = 300.0) -> dict:
    """MD stability (:func:`loops.explore.md_stability`) from 4 geometries spread through the first test file."""
    from loops.explore import md_stability

    frames = load_test(next(iter(tests.values())), None)
    starts = [frames[i] for i in np.linspace(0, len(frames) - 1, min(4, len(frames))).astype(int)]
    return md_stability(model, starts, temperature=temperature, steps=steps)


def stability_rows(out: Path, strategies: Sequence[str], seeds: Sequence[int], budgets: Sequence[int]) -> list[dict]:
    """One row per finished cell with an MD stability: strategy, seed, budget, mean_fs, survived, n."""
    rows = []
    for strategy in strategies:
        for seed in seeds:
            for budget in budgets:
                record = read_cell(Path(out), strategy, seed, budget)
                if record is not None and "md_stability" in record:
                    m = record["md_stability"]
                    rows.append({"strategy": strategy, "seed": seed, "budget": budget, "mean_fs": m["mean_fs"],
                                 "survived": m["survived"], "n": m["n"], "temperature_K": m["temperature_K"],
                                 "steps": m["steps"]})
    return rows


def run_cell_in_worker(task: CellTask) -> dict:
    """:func:`run_cell` for :meth:`loops.parallel.Executor.map` (threads are set by the executor)."""
    return run_cell(task)


def read_cell(out: Path, strategy: str, seed: int, budget: int,
              train_idx: Sequence[int] | None = None) -> dict | None:
    """A finished cell, or None if absent or trained on other picks than ``train_idx``.

    Raises
    ------
    RunMismatchError
        The cell file exists but is not valid JSON: it is named, never silently refitted.
    """
    path = cell_path(out, strategy, seed, budget)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunMismatchError(f"cell file {path} is corrupt ({exc}); remove it to refit that cell") from None
    if train_idx is not None and record.get("train") != [int(i) for i in train_idx]:
        return None  # the selection changed since (e.g. a larger budget re-ran exchange)
    return record


def collect_rows(out: Path, strategies: Sequence[str], seeds: Sequence[int], budgets: Sequence[int],
                 refinements: Sequence[str] = ()) -> list[dict]:
    """Tidy rows of every finished cell of the asked-for strategies, seeds and budgets.

    With ``refinements`` every row also has a ``refinement``: ``"none"`` for the model as trained,
    and one row set per refinement the cell was scored with (:mod:`loops.refine`).
    """
    rows = []
    for strategy in strategies:
        for seed in seeds:
            for budget in budgets:
                record = read_cell(Path(out), strategy, seed, budget)
                if record is None:
                    continue
                scored = [("none", record["errors"])]
                scored += [(r, record.get("refined", {}).get(r)) for r in refinements]
                for refinement, errors in scored:
                    for test_set, metrics in (errors or {}).items():
                        for metric in METRICS:
                            if metric in metrics:
                                rows.append({"strategy": strategy, "seed": seed, "budget": budget,
                                             "test_set": test_set, "metric": metric, "value": float(metrics[metric]),
                                             **({"refinement": refinement} if refinements else {})})
    return rows
