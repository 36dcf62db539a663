"""The `oed` command line, run as a new user would: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oed.descriptors import SOAPDescriptor
from oed.information import log_det_information
from oed.io import read_structures

OED = [str(Path(sys.executable).with_name("oed"))]


def oed(*args, check=True):
    proc = subprocess.run(OED + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"oed {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory, ethanol_dir):
    from oed.io import write_structures

    path = tmp_path_factory.mktemp("pool") / "pool.xyz"
    write_structures(path, read_structures(ethanol_dir / "train.xyz")[:120])
    return path


def test_rank_json_d_optimal_beats_random(small_pool, tmp_path):
    res = json.loads(oed("rank", small_pool, "--budget", 15, "--json", "-o", tmp_path / "picks.xyz").stdout)
    sel, gains = res["selected"], res["gains"]
    assert len(sel) == len(set(sel)) == 15 == len(gains)
    assert all(0 <= i < 120 for i in sel)
    assert np.all(np.diff(gains) <= 1e-12)
    picks = read_structures(tmp_path / "picks.xyz")
    assert [a.info["oed_pool_index"] for a in picks] == sel
    rnd = json.loads(oed("rank", small_pool, "--budget", 15, "--json", "--strategy", "random").stdout)
    assert res["log_det"] > rnd["log_det"]
    # the reported log det is the information matrix of the picks (noise-scaled rows, λ = 1)
    pool = read_structures(small_pool)
    X = SOAPDescriptor().fit(pool).per_structure(pool) / (0.001 * 9)
    assert res["log_det"] == pytest.approx(log_det_information(X[sel], reg=1.0), rel=1e-9)


def test_rank_with_train_changes_picks_and_prints_table(small_pool, ethanol_dir, tmp_path):
    from oed.io import write_structures

    train = tmp_path / "train.xyz"
    write_structures(train, read_structures(ethanol_dir / "test_MD.xyz")[:30])
    free = json.loads(oed("rank", small_pool, "--budget", 10, "--json").stdout)["selected"]
    cond = json.loads(oed("rank", small_pool, "--budget", 10, "--json", "--train", train).stdout)["selected"]
    assert free != cond
    table = oed("rank", small_pool, "--budget", 3).stdout
    assert "pool index" in table and "gain" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["rank", "missing.xyz", "--budget", "3"], "not found"),
        (["rank", "{empty}", "--budget", "3"], "empty"),
        (["rank", "{malformed}", "--budget", "3"], "cannot read"),
        (["rank", "{pool}", "--budget", "0"], "budget"),
        (["rank", "{pool}", "--budget", "3", "--strategy", "magic"], "unknown selection strategy"),
        (["label", "{pool}", "-o", "{out}", "--method", "pbe"], "xc/basis"),
        (["label", "{pool}", "-o", "{out}", "--workers", "0"], "workers"),
        (["loop", "run", "--pool", "{pool}", "--test", "{nitrogen}", "--out", "{out_dir}",
          "--method", "hf/sto-3g"], "N"),
    ],
)
def test_bad_input_one_clear_error(args, message, small_pool, tmp_path):
    from ase.build import molecule
    from oed.io import write_structures

    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "malformed.xyz").write_text("2\nLattice=oops\nH 0 0 0\nH 0 0\n")
    write_structures(tmp_path / "nitrogen.xyz", [molecule("CH3CH2NH2")])
    paths = {"pool": small_pool, "empty": tmp_path / "empty.xyz", "malformed": tmp_path / "malformed.xyz",
             "out": tmp_path / "out.xyz", "out_dir": tmp_path / "run", "nitrogen": tmp_path / "nitrogen.xyz"}
    proc = oed(*[a.format(**paths) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.xyz").exists()
