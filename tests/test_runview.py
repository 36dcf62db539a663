"""oed loop status / export / report on run directories built by hand and on one real run.

The hand-built directories use the run's own writers — a real ase.db through
:class:`loops.store.LabelStore`, a phase journal through :class:`loops.phases.PhaseJournal`,
cells, selections, results and explore files as :mod:`loops.loop_explore` writes them — so
the readers are tested against the formats, finished and killed half-way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from loops.cli import app
from loops.phases import PhaseJournal
from loops.runreport import render_report
from loops.runview import export_labels, open_run, round_rows, run_pid
from loops.store import LabelStore
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, read_structures, structure_hash, write_structures

LEVEL = "xtb:gfn2-xtb"
runner = CliRunner()


def _labelled(atoms, i):
    a = atoms.copy()
    a.calc = None
    a.info = {"config_type": a.info["config_type"]} if "config_type" in a.info else {}
    a.info[REF_ENERGY] = -1000.0 - i
    a.arrays[REF_FORCES] = np.full((len(a), 3), 0.01 * i)
    return a


def _round_trip_changes_hash(atoms) -> bool:
    """True when writing ``atoms`` to extxyz and reading it back changes its structure hash."""
    back = atoms.copy()
    back.positions = np.round(atoms.positions, 8)  # what extxyz keeps (%16.8f)
    return structure_hash(back) != structure_hash(atoms)


def _explored(pool, r, n, rng, *, lo, hi, u_max, with_changed=False):
    """n explored frames of round r (perturbed pool geometries) with their uncertainty."""
    frames = []
    while len(frames) < n:
        a = pool[len(frames) % len(pool)].copy()
        a.info = {}
        a.positions = a.positions + rng.normal(scale=0.05, size=a.positions.shape)
        if with_changed and not frames and not _round_trip_changes_hash(a):
            continue  # the first frame is one whose hash an extxyz round trip changes
        a.info.update(uncertainty=float(rng.uniform(lo, u_max)), temperature=300.0, md_step=10, start=0,
                      explore_round=r, config_type=f"explore_round{r}")
        frames.append(a)
    return frames


def _explore_record(r, frames, values, lo, hi, stopped):
    trajectories = [{"start": 0, "temperature": 300.0, "steps": 40 if s is None else 20, "stopped": s,
                     "max_uncertainty": float(max(values)), "time_fs": 20.0 if s is None else 10.0}
                    for s in stopped]
    return {"round": r, "temperatures": [300.0, 600.0], "md_steps": 40, "timestep_fs": 0.5, "uncertainty": "gamma",
            "unit": "", "trust_lo": lo, "trust_hi": hi, "n_frames": len(values), "n_candidates": len(frames),
            "n_above_lo": int(sum(v >= lo for v in values)),
            "converged": bool(all(v < lo for v in values)) and not any(stopped), "seconds": 3.5,
            "trajectories": trajectories, "uncertainty_values": [float(v) for v in values]}


def make_run(out: Path, pool, *, killed_in_label=False, journal=True, converged_last=True) -> dict:
    """A finished (or killed in round 2's label phase) exploring run; returns what went in.

    Round 0 labels 4 pool configurations (one fails); round 1 explores and labels 3 explored
    frames; round 2 explores (no frame above trust_lo when ``converged_last``) and labels 2 more.
    """
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"strategy": "fps", "seed": 0, "oracle": LEVEL, "model": "gap",
                                                 "explore": "md"}))
    store = LabelStore(out / "labels.db", LEVEL)
    jr = PhaseJournal(out if journal else None, "fps/seed0")
    lo, hi = 1.5, 10.0
    frames = list(pool)
    explored = {1: _explored(pool, 1, 5, rng, lo=lo, hi=hi, u_max=4.0, with_changed=True)}
    explored[2] = _explored(pool, 2, 3, rng, lo=lo, hi=hi, u_max=4.0)
    values = {1: [0.5, 0.9] + [f.info["uncertainty"] for f in explored[1]],
              2: ([0.3, 0.7, 1.1] if converged_last else [0.4, 2.0, 2.5])}
    stops = {1: [None, "trust-hi", "bond"], 2: [None, None] if converged_last else [None, "fragments"]}
    picks = {0: [0, 1, 2, 3], 1: [len(frames), len(frames) + 1, len(frames) + 2]}
    frames += explored[1]
    picks[2] = [len(frames), len(frames) + 1]
    frames += explored[2]
    selected, rounds, results, cells_dir = [], [], [], out / "cells" / "fps" / "seed0"
    n_failed = 0
    for r in range(3):
        if r > 0:
            with jr.phase("explore", r) as c:
                write_structures(out / "explore" / f"round{r}.xyz", explored[r])
                rec = _explore_record(r, explored[r], values[r], lo, hi, stops[r])
                (out / "explore" / f"round{r}.json").write_text(json.dumps(rec))
                c.update(frames=rec["n_frames"], candidates=rec["n_candidates"], stopped=1)
            with jr.phase("select", r) as c:
                c["selected"] = len(picks[r])
        selected += picks[r]
        rounds.append(len(picks[r]))
        (out / "selections" / "fps").mkdir(parents=True, exist_ok=True)
        (out / "selections" / "fps" / "seed0.json").write_text(json.dumps({"selected": selected, "rounds": rounds}))
        todo = picks[r][:1] if (killed_in_label and r == 2) else picks[r]
        if killed_in_label and r == 2:
            jr.write(phase="label", round=r, event="start")
        else:
            cm = jr.phase("label", r)
            c = cm.__enter__()
        for i in todo:
            a = frames[i]
            fail = r == 0 and i == 3
            store.add(structure_hash(a), atoms=a if fail else _labelled(a, i), pool_index=i, round=r, seconds=0.25,
                      error="SCFNotConverged: no convergence after the fallback chain" if fail else None)
            n_failed += fail
        if killed_in_label and r == 2:
            break
        c.update(labels=len(todo) - (r == 0), failed=int(r == 0))
        cm.__exit__(None, None, None)
        with jr.phase("fit", r):
            pass
        with jr.phase("evaluate", r):
            pass
        n_lab = len(selected) - n_failed
        errors = {"test_md": {"force_mae": 300.0 - 50 * r, "energy_mae": 20.0 - r},
                  "test_md:ethanol": {"force_mae": 1.0}, "nm": {"energy_mae": 40.0 - r}}
        cell = {"strategy": "fps", "seed": 0, "round": r, "budget": len(selected), "train": selected,
                "n_labelled": n_lab, "n_failed": n_failed, "fit_seconds": 2.0, "score_seconds": 1.0,
                "errors": errors}
        cells_dir.mkdir(parents=True, exist_ok=True)
        (cells_dir / f"k{len(selected)}.json").write_text(json.dumps(cell))
        row = {"round": r, "n_labelled": n_lab, "n_failed": n_failed, "n_picked": rounds[r],
               "strategy": "seeds" if r == 0 else "fps", "fit_seconds": 2.0, "errors": errors,
               "md_stability": {"temperature_K": 300.0, "steps": 40, "timestep_fs": 0.5, "time_fs": [20.0, 12.0],
                                "mean_fs": 16.0, "std_fs": 4.0, "survived": 1, "n": 2, "stopped": {"bond": 1}}}
        if r > 0:
            row["exploration"] = {"n_frames": len(values[r]), "n_candidates": len(explored[r]), "converged": False}
        results.append(row)
        (out / "results.json").write_text(json.dumps(results))
    if not killed_in_label:
        (out / "stop.json").write_text(json.dumps({"reason": "rounds", "round": 2, "detail": "2 rounds done"}))
    return {"frames": frames, "explored": explored}


@pytest.fixture(scope="module")
def pool(ethanol_pool):
    return [a.copy() for a in ethanol_pool[:6]]


def test_status_of_a_finished_run(pool, tmp_path):
    make_run(tmp_path / "run", pool)
    rows = round_rows(open_run(tmp_path / "run"))
    assert [r["state"] for r in rows] == ["done", "done", "done"]
    assert [(r["labels"], r["failed"]) for r in rows] == [(3, 1), (3, 0), (2, 0)]
    assert [r["n_labelled"] for r in rows] == [3, 6, 8]
    assert [r["candidates"] for r in rows] == [None, 5, 3]
    assert rows[2]["errors"] == {"test_md": ("force_mae", 200.0), "nm": ("energy_mae", 38.0)}
    assert set(rows[1]["seconds"]) == {"explore", "select", "label", "fit", "evaluate"}
    assert rows[0]["times_from"] == "journal" and "explore" not in rows[0]["seconds"]
    res = runner.invoke(app, ["loop", "status", str(tmp_path / "run")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "done" in res.output and "3/1" in res.output and "200.0" in res.output and "F-MAE" in res.output
    assert "8 labels, 1 failed" in res.output and "stopped: rounds" in res.output


def test_status_of_a_run_killed_mid_label(pool, tmp_path):
    make_run(tmp_path / "run", pool, killed_in_label=True)
    view = open_run(tmp_path / "run")
    assert view.pid is None
    rows = round_rows(view)
    assert [r["state"] for r in rows] == ["done", "done", "stopped in label"]
    assert (rows[2]["labels"], rows[2]["n_labelled"], rows[2]["errors"]) == (1, None, {})
    assert rows[2]["candidates"] == 3 and rows[2]["running"] is None
    res = runner.invoke(app, ["loop", "status", str(tmp_path / "run")], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "stopped in label" in res.output and "not running" in res.output


def test_status_shows_a_live_run_and_its_running_phase(pool, tmp_path):
    from loops.rundir import run_lock

    out = tmp_path / "run"
    make_run(out, pool, killed_in_label=True)
    (out / ".oed.lock").write_text("999999\n")  # a stale PID of a killed run is not a live run
    assert run_pid(out) is None
    with run_lock(out):
        view = open_run(out)
        assert view.pid == os.getpid()
        rows = round_rows(view, now=view.phases[-1]["time"] + 5.0)
    assert rows[2]["state"] == "running: label" and rows[2]["running"] == "label"
    assert rows[2]["seconds"]["label"] == pytest.approx(5.0)


def test_status_without_a_journal_reads_labels_and_cells(pool, tmp_path):
    make_run(tmp_path / "run", pool, killed_in_label=True, journal=False)
    assert not (tmp_path / "run" / "phases.jsonl").exists()
    rows = round_rows(open_run(tmp_path / "run"))
    assert [r["state"] for r in rows] == ["done", "done", "stopped in label"]
    assert rows[0]["times_from"] == "files"
    assert rows[0]["seconds"] == {"label": 1.0, "fit": 2.0, "evaluate": 1.0}
    assert rows[1]["seconds"]["explore"] == 3.5 and rows[2]["seconds"] == {"label": 0.25, "explore": 3.5}


def test_a_directory_that_is_not_a_run_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path, message in ((tmp_path / "empty", "not a run directory"), (tmp_path / "nope", "does not exist"),
                          (tmp_path / "file.txt", "is a file")):
        with pytest.raises(InputError, match=message):
            open_run(path)
        for cmd in (["status"], ["export", "-o", str(tmp_path / "x.xyz")], ["report", "-o", str(tmp_path / "r.md")]):
            res = runner.invoke(app, ["loop", cmd[0], str(path), *cmd[1:]])
            assert res.exit_code == 2 and message in res.output, res.output


def test_export_writes_every_label_with_its_uncertainty(pool, tmp_path):
    built = make_run(tmp_path / "run", pool)
    target = tmp_path / "data.xyz"
    res = runner.invoke(app, ["loop", "export", str(tmp_path / "run"), "-o", str(target)])
    assert res.exit_code == 0, res.output
    assert "wrote 8 labels" in res.output and "1 failed label left out" in res.output
    got = read_structures(target)
    assert [a.info["oed_pool_index"] for a in got] == [0, 1, 2, 6, 7, 8, 11, 12]
    by_index = {a.info["oed_pool_index"]: a for a in got}
    assert by_index[0].info["REF_energy"] == pytest.approx(-1000.0)
    np.testing.assert_allclose(by_index[7].arrays["REF_forces"], 0.07)
    assert by_index[0].info["config_type"] == "Training_set"  # the pool's own config_type is kept
    assert all(a.info["level_of_theory"] == LEVEL for a in got)
    for r, idx in ((1, (6, 7, 8)), (2, (11, 12))):
        for i in idx:
            info, want = by_index[i].info, built["frames"][i].info
            assert info["config_type"] == f"explore_round{r}" and info["oed_round"] == r
            assert info["uncertainty"] == pytest.approx(want["uncertainty"]) and info["uncertainty_kind"] == "gamma"
            assert info["temperature"] == 300.0
    # the first explored frame changes hash on an extxyz round trip: found by geometry
    assert _round_trip_changes_hash(built["frames"][6])
    again = runner.invoke(app, ["loop", "export", str(tmp_path / "run"), "-o", str(target)])
    assert again.exit_code == 2 and "--force" in again.output


def test_export_of_a_half_finished_run_has_the_labels_so_far(pool, tmp_path):
    make_run(tmp_path / "run", pool, killed_in_label=True)
    n, failed = export_labels(open_run(tmp_path / "run"), tmp_path / "d.xyz")
    assert (n, failed) == (7, 1) and len(read_structures(tmp_path / "d.xyz")) == 7


def test_report_of_a_finished_converged_run(pool, tmp_path):
    make_run(tmp_path / "run", pool)
    res = runner.invoke(app, ["loop", "report", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    path = tmp_path / "run" / "report.md"
    assert str(path) in res.output
    text = path.read_text()
    for what in ("learning_curve", "uncertainty", "stops", "phases"):
        png = tmp_path / "run" / f"report_{what}.png"
        assert png.stat().st_size > 1000 and f"({png.name})" in text
    assert "## Is the model converged?\n\n**Yes**" in text
    assert "40 steps × 0.5 fs = 20 fs at 300, 600 K" in text and "trust_lo = 1.5" in text
    assert "SCFNotConverged: no convergence" in text  # the failed label, with its reason
    assert "## MD stability" in text and "16 ± 4" in text and "1 × bond" in text
    assert "| 1 | 7 | 5 | 5 | False | 4 | 1 | 1 | 1 |" in text  # frames, candidates, ≥ lo; ran/trust-hi/bond
    # rerendering the default report is allowed; another existing --output needs --force
    assert runner.invoke(app, ["loop", "report", str(tmp_path / "run")]).exit_code == 0
    other = tmp_path / "elsewhere.md"
    other.write_text("mine")
    assert runner.invoke(app, ["loop", "report", str(tmp_path / "run"), "-o", str(other)]).exit_code == 2
    assert other.read_text() == "mine"


def test_report_of_a_run_not_converged_and_killed(pool, tmp_path):
    make_run(tmp_path / "run", pool, killed_in_label=True, converged_last=False)
    text = render_report(open_run(tmp_path / "run"), tmp_path / "out" / "r.md").read_text()
    assert "**No**" in text and "2 of 3 frames were at or above trust_lo = 1.5 (largest 2.5)" in text
    assert "1 × fragments" in text and "stopped in label" in text
    assert (tmp_path / "out" / "r_learning_curve.png").exists()


@pytest.mark.integration  # a real loop: SOAP features and two gap_fit runs
def test_tools_on_a_real_run_on_the_replayed_pool(ethanol_dir, tmp_path):
    from loops.gap import GAPSettings
    from loops.loop import LoopConfig, run_loop

    write_structures(tmp_path / "pool.xyz", read_structures(ethanol_dir / "train.xyz")[:20])
    write_structures(tmp_path / "test_md.xyz", read_structures(ethanol_dir / "test_MD.xyz")[:5])
    out = tmp_path / "run"
    run_loop(LoopConfig(pool=tmp_path / "pool.xyz", tests=(tmp_path / "test_md.xyz",), out=out, n_init=4,
                        batch_size=3, n_rounds=1, strategy="random", oracle="pool", workers=1,
                        gap=GAPSettings(n_max=4, l_max=3, n_sparse=20)), log=lambda m: None, progress=False)
    view = open_run(out)
    assert view.labels_from == "labelled.xyz"  # a replayed pool keeps no labels.db
    rows = round_rows(view)
    assert [(r["state"], r["labels"], r["n_labelled"]) for r in rows] == [("done", 4, 4), ("done", 3, 7)]
    assert "test_md" in rows[1]["errors"] and rows[1]["seconds"]["fit"] > 0
    res = runner.invoke(app, ["loop", "status", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "done" in res.output, res.output
    res = runner.invoke(app, ["loop", "export", str(out), "-o", str(tmp_path / "all.xyz")])
    assert res.exit_code == 0 and "wrote 7 labels" in res.output, res.output
    got = read_structures(tmp_path / "all.xyz")
    assert sorted(a.info["oed_round"] for a in got) == [0, 0, 0, 0, 1, 1, 1]
    assert all(a.info["level_of_theory"] == "pool" for a in got)
    res = runner.invoke(app, ["loop", "report", str(out)])
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "Not measured" in text and (out / "report_learning_curve.png").exists()


def test_status_names_a_failed_phase_and_a_converged_stop(pool, tmp_path):
    out = tmp_path / "run"
    make_run(out, pool)
    jr = PhaseJournal(out, "fps/seed0")
    with pytest.raises(RuntimeError):
        with jr.phase("fit", 2):
            raise RuntimeError("gap_fit exited 1")
    with jr.phase("explore", 3) as c:
        c.update(frames=4, candidates=0)
    (out / "stop.json").write_text(json.dumps({"reason": "converged", "round": 3, "detail": "no frame reached"}))
    with (out / "phases.jsonl").open("a") as fh:
        fh.write('{"phase": "fit", "round": 3, "ev')  # a torn last line (a kill mid-write) is skipped
    rows = round_rows(open_run(out))
    assert [r["state"] for r in rows] == ["done", "done", "failed in fit", "converged"]
    assert rows[3]["candidates"] == 0
