"""Hostile input, concurrent runs and signals, tried as a hostile user would: through the real CLI.

Each case asserts the exit code, one clear message without a traceback, and that nothing is
half-written or lost. Labels are HF/STO-3G (fast, real PySCF) unless a case needs time to
interrupt; fits are real ``gap_fit`` with a small GAP.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from ase import Atoms
from ase.build import molecule

from oed.io import read_structures, write_structures

#: each case runs the real CLI in a subprocess (seconds of start-up each).
pytestmark = pytest.mark.integration

OED = [str(Path(sys.executable).with_name("oed"))]
DATA = Path(__file__).resolve().parent.parent / "data" / "ethanol"
FAST = ["--method", "hf/sto-3g", "--workers", "1"]


def oed(*args, env=None, timeout=600):
    return subprocess.run(OED + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def one_clear_error(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM systems").fetchone()[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    frames = read_structures(DATA / "train.xyz")
    write_structures(d / "pool.xyz", frames[:12])
    write_structures(d / "test.xyz", read_structures(DATA / "test_MD.xyz")[:4])
    unlabelled = [Atoms(a.numbers, a.positions) for a in frames[12:15]]
    write_structures(d / "unlabelled.xyz", unlabelled)
    (d / "a_file").write_text("not a folder\n")
    return d


def loop_args(files, out, *extra):
    return ["loop", "run", "--pool", files / "pool.xyz", "--test", files / "test.xyz", "--out", out,
            "--init", 3, "--batch", 2, "--rounds", 1, "--strategy", "random", *FAST, *extra]


def compare_args(files, out, *extra):
    return ["compare", "--pool", files / "pool.xyz", "--test", files / "test.xyz", "--out", out,
            "--strategies", "random", "--budgets", "3", "--seeds", 1, "--workers", 1,
            "--e0s", DATA / "isolated_atoms.xyz", *extra]


# 1. -- output paths that cannot be written are refused before any work -------------------------------
@pytest.mark.parametrize("command", ["label", "rank", "domain", "plan", "loop", "compare"])
@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_unwritable_output_is_refused_before_any_work(files, tmp_path, command, where):
    target = tmp_path if where == "folder" else files / "a_file" / "out.xyz"
    pool = files / "pool.xyz"
    args = {
        "label": ["label", pool, "-o", target, *FAST],
        "rank": ["rank", pool, "--budget", 2, "-o", target],
        "domain": ["domain", pool, files / "test.xyz", "--plot", target],
        "plan": ["plan", pool, "--budgets", "2", "--strategies", "random", "--plot", target],
        "loop": loop_args(files, files / "a_file" if where == "folder" else target),
        "compare": compare_args(files, files / "a_file" if where == "folder" else target),
    }[command]
    proc = oed(*args)
    one_clear_error(proc, 2, "error:")
    assert "labelled" not in proc.stderr  # nothing was computed and thrown away
    assert (files / "a_file").read_text() == "not a folder\n"


def test_existing_output_needs_force(files, tmp_path):
    out = tmp_path / "picks.xyz"
    out.write_text("keep me\n")
    one_clear_error(oed("rank", files / "pool.xyz", "--budget", 2, "-o", out), 2, "--force")
    assert out.read_text() == "keep me\n"
    assert oed("rank", files / "pool.xyz", "--budget", 2, "-o", out, "--force").returncode == 0
    assert len(read_structures(out)) == 2
    lab = tmp_path / "labels.xyz"
    lab.write_text("keep me too\n")
    one_clear_error(oed("label", files / "pool.xyz", "-o", lab, *FAST), 2, "--force")
    assert lab.read_text() == "keep me too\n"


# 2. -- a run that cannot start records no settings ------------------------------------------------------
def test_failed_start_leaves_no_settings_so_the_corrected_command_runs(files, tmp_path):
    out = tmp_path / "c1"
    one_clear_error(oed(*compare_args(files, out, "--oracle", "pyscf:pbe")), 2, "xc/basis")
    assert not (out / "config.json").exists()
    assert oed(*compare_args(files, out)).returncode == 0

    unlabelled = tmp_path / "c2"
    proc = oed("compare", "--pool", files / "unlabelled.xyz", "--test", files / "test.xyz", "--out", unlabelled,
               "--strategies", "random", "--budgets", "2", "--seeds", 1)
    one_clear_error(proc, 2, "no reference energy")
    assert not (unlabelled / "config.json").exists()


def test_element_without_e0_is_refused_before_settings_are_recorded(files, tmp_path):
    xenon = tmp_path / "xe.xyz"
    frames = read_structures(files / "pool.xyz")[:4]
    write_structures(xenon, frames + [Atoms("Xe2", positions=[[0, 0, 0], [0, 0, 3.1]])])
    out = tmp_path / "loop"
    proc = oed("loop", "run", "--pool", xenon, "--test", files / "test.xyz", "--out", out, "--init", 2,
               "--batch", 1, "--rounds", 0, *FAST)
    one_clear_error(proc, 2, "Xe")
    assert not (out / "config.json").exists()
    assert oed(*loop_args(files, out)).returncode == 0  # the same --out with a valid pool is not refused


# 3. -- unphysical geometries are recorded failures; the rest are labelled ------------------------------
def test_overlapping_atoms_fail_alone(files, tmp_path):
    water = molecule("H2O")
    squashed = water.copy()
    squashed.positions[1] = squashed.positions[0] + [0.01, 0.0, 0.0]  # O–H of 0.01 Å
    coincident = water.copy()
    coincident.positions[2] = coincident.positions[1]
    mixed = tmp_path / "mixed.xyz"
    write_structures(mixed, [water, squashed, water.copy(), coincident])
    out = tmp_path / "labelled.xyz"
    proc = oed("label", mixed, "-o", out, "--method", "hf/sto-3g", "--workers", "2")
    one_clear_error(proc, 1, "configuration 1: unphysical geometry", "configuration 3: unphysical geometry")
    assert len(read_structures(out)) == 2  # both valid waters are labelled and kept

    pool = tmp_path / "pool_bad.xyz"
    frames = read_structures(files / "pool.xyz")[:5]
    bad = frames[2].copy()
    bad.positions[1] = bad.positions[0]
    write_structures(pool, frames[:2] + [bad] + frames[3:])
    run = tmp_path / "loop"
    args = ["loop", "run", "--pool", pool, "--test", files / "test.xyz", "--out", run, "--init", 5, "--batch", 1,
            "--rounds", 0, "--strategy", "random", *FAST]
    assert oed(*args).returncode == 0
    (result,) = json.loads((run / "results.json").read_text())
    assert (result["n_labelled"], result["n_failed"]) == (4, 1)
    assert oed(*args).returncode == 0  # and the rerun neither crashes nor relabels
    assert rows(run / "labels.db") == 5


# 4. -- a test file without labels is refused at the start, by name --------------------------------------
@pytest.mark.parametrize("command", ["loop", "compare"])
def test_unlabelled_test_file_is_named_before_labelling(files, tmp_path, command):
    out = tmp_path / "run"
    args = loop_args(files, out) if command == "loop" else compare_args(files, out)
    args[args.index(files / "test.xyz")] = files / "unlabelled.xyz"
    one_clear_error(oed(*args), 2, "unlabelled.xyz", "no reference energy or forces")
    assert not (out / "labels.db").exists() and not (out / "config.json").exists()


# 5. -- one run per directory ---------------------------------------------------------------------------------
def test_a_second_run_on_the_same_directory_is_refused(files, tmp_path):
    from loops.rundir import run_lock

    out = tmp_path / "busy"
    with run_lock(out):  # a real advisory lock, held by this test process
        one_clear_error(oed(*loop_args(files, out)), 2, f"PID {os.getpid()}")
    assert not (out / "labels.db").exists()

    # two real oed processes: the second exits at once and names the first
    slow = ["loop", "run", "--pool", files / "pool.xyz", "--test", files / "test.xyz", "--out", out, "--init", 4,
            "--batch", 1, "--rounds", 0, "--method", "pbe/def2-svp", "--workers", "1"]
    first = subprocess.Popen(OED + [str(a) for a in slow], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: (out / "labels.db").exists(), first)
        one_clear_error(oed(*slow), 2, f"PID {first.pid}")
    finally:
        first.kill()
        first.wait()


# 6. -- SIGTERM and SIGINT end the children and exit with one line --------------------------------------------
def _wait(condition, proc, timeout=300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the run ended before the condition held: {proc.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_labelling_ends_the_workers(files, tmp_path, signum):
    out = tmp_path / "run"
    args = ["loop", "run", "--pool", files / "pool.xyz", "--test", files / "test.xyz", "--out", out, "--init", 6,
            "--batch", 1, "--rounds", 0, "--method", "pbe/def2-svp", "--workers", "2"]
    proc = subprocess.Popen(OED + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # two spawned labelling workers (plus the resource tracker) are running
        _wait(lambda: len([p for p in _descendants(proc.pid) if "python" in p.name().lower()]) >= 3, proc)
        children = _descendants(proc.pid)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and f"stopped by {signal.Signals(signum).name}" in stderr
    assert len(stderr.strip().splitlines()[-1]) < 200
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]


@pytest.mark.integration
def test_sigterm_during_gap_fit_ends_gap_fit(files, tmp_path):
    out = tmp_path / "run"
    args = loop_args(files, out)
    proc = subprocess.Popen(OED + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(p.name() == "gap_fit" for p in _descendants(proc.pid)), proc)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert oed(*args).returncode == 0  # resumes: the labels were kept
    assert rows(out / "labels.db") == 5


# 7. -- training configurations interpolate ---------------------------------------------------------------------
def test_domain_does_not_flag_the_training_set(files):
    proc = oed("domain", files / "pool.xyz", files / "pool.xyz", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sets"]["pool"]["fraction_extrapolating"] == 0.0
    assert max(report["sets"]["pool"]["gamma"]) == pytest.approx(1.0, abs=1e-6)


# 8. -- repeated configurations are candidates once ------------------------------------------------------------
def test_repeats_are_candidates_once(files, tmp_path):
    frames = read_structures(files / "pool.xyz")[:6]
    pool = tmp_path / "repeats.xyz"
    write_structures(pool, frames + frames[:4])
    proc = oed("rank", pool, "--budget", 8, "--strategy", "fps", "--json")
    assert proc.returncode == 0, proc.stderr
    picked = json.loads(proc.stdout)["selected"]
    assert len({tuple(np.round(read_structures(pool)[i].positions.ravel(), 6)) for i in picked}) == len(picked) == 6
    assert "repeats 4 configuration(s)" in proc.stderr and "warnings.warn" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "warning" in ln]) == 2  # repeats, budget > candidates

    run = tmp_path / "loop"
    assert oed("loop", "run", "--pool", pool, "--test", files / "test.xyz", "--out", run, "--init", 6, "--batch", 1,
               "--rounds", 0, "--strategy", "random", *FAST).returncode == 0
    (result,) = json.loads((run / "results.json").read_text())
    assert (result["n_labelled"], result["n_failed"]) == (6, 0)


# -- and the rest -----------------------------------------------------------------------------------------------
def test_pool_without_isolated_atoms_fits_e0s_and_says_so(files, tmp_path):
    proc = oed("compare", "--pool", files / "pool.xyz", "--test", files / "test.xyz", "--out", tmp_path / "c",
               "--strategies", "random", "--budgets", "4", "--seeds", 1, "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    assert "least squares" in proc.stderr


def test_test_labels_at_another_level_of_theory_are_warned_about(files, tmp_path):
    test = tmp_path / "test_pbe.xyz"
    frames = read_structures(files / "test.xyz")
    for a in frames:
        a.info["level_of_theory"] = "pbe/def2-svp"
    write_structures(test, frames)
    proc = oed("loop", "run", "--pool", files / "pool.xyz", "--test", test, "--out", tmp_path / "run", "--init", 2,
               "--batch", 1, "--rounds", 0, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "labelled at pbe/def2-svp" in proc.stderr and "hf/sto-3g" in proc.stderr
