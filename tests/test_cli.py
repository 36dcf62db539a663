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


@pytest.mark.integration  # SOAP of the pool in a subprocess: tens of seconds
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


@pytest.mark.integration  # SOAP of the pool in a subprocess: tens of seconds
def test_domain_flags_ood_sets(ethanol_dir, tmp_path):
    from oed.io import write_structures

    train = tmp_path / "train.xyz"
    write_structures(train, read_structures(ethanol_dir / "train.xyz")[:60])
    md = tmp_path / "md.xyz"
    write_structures(md, read_structures(ethanol_dir / "test_MD.xyz")[:40])
    res = json.loads(oed("domain", train, md, ethanol_dir / "test_H_removal.xyz", "--json",
                         "--plot", tmp_path / "g.png").stdout)
    assert len(res["gamma"]) == 40 + 60
    sets = res["sets"]
    assert sets["test_H_removal"]["median"] > 2 * sets["md"]["median"]
    assert (tmp_path / "g.png").stat().st_size > 0
    assert "median γ" in oed("domain", train, md).stdout


def test_plan_forecast_json_and_plot(small_pool, tmp_path):
    res = json.loads(oed("plan", small_pool, "--budgets", "5,10,20", "--strategies", "d-optimal,random",
                         "--json", "--plot", tmp_path / "fc.png", "--target-variance", "1e9").stdout)
    for name in ("d-optimal", "random"):
        f = res["strategies"][name]
        assert f["budgets"] == [5, 10, 20]
        assert all(a >= b for a, b in zip(f["variance"], f["variance"][1:]))
        assert f["budget_to_target"] == 5
    assert (tmp_path / "fc.png").stat().st_size > 0


@pytest.mark.integration  # SOAP of the pool in a subprocess: tens of seconds
def test_plan_calibrated_force_forecast(small_pool, ethanol_dir, tmp_path):
    from oed.io import write_structures

    train = tmp_path / "train.xyz"
    write_structures(train, read_structures(ethanol_dir / "test_MD.xyz")[:15])
    res = json.loads(oed("plan", small_pool, "--budgets", "5,20", "--strategies", "d-optimal,random",
                         "--train", train, "--features", "forces", "--json").stdout)
    cal = res["calibration"]
    assert cal["n_rows"] == 15 * 28 and cal["noise_scale"] > 0
    rmse = res["strategies"]["d-optimal"]["force_rmse"]
    assert len(rmse) == 2 and rmse[1] <= rmse[0] and all(0 < r < 1e5 for r in rmse)


@pytest.mark.integration  # SOAP of the pool in a subprocess: tens of seconds
@pytest.mark.parametrize("extra", [
    ["--features", "forces", "--descriptor", "gap-kernel"],
    ["--strategy", "i-optimal", "--target", "{target}"],
    ["--strategy", "info-gain", "--train", "{target}"],
    ["--backend", "quippy"],
])
def test_rank_feature_options(small_pool, ethanol_dir, tmp_path, extra):
    from oed.io import write_structures

    target = tmp_path / "target.xyz"
    write_structures(target, read_structures(ethanol_dir / "test_MD.xyz")[:10])
    res = json.loads(oed("rank", small_pool, "--budget", 6, "--json",
                         *[a.format(target=target) for a in extra]).stdout)
    assert len(set(res["selected"])) == 6


def test_rank_target_with_a_strategy_that_ignores_it(small_pool, tmp_path):
    proc = oed("rank", small_pool, "--budget", 3, "--strategy", "fps", "--target", small_pool, check=False)
    assert proc.returncode == 2 and "does not use a target" in proc.stderr


def test_selection_benchmark_quick():
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "selection.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "skmatter FPS (baseline)" in proc.stdout and "same picks" in proc.stdout
