"""`oed loop run` with the strategies `oed compare` accepts (name@space, model-driven, cheap-oracle),
and `oed rank` with the posterior-kernel selectors and GGFPS. Real gap_fit, real GFN2-xTB (tblite)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from loops.errors import RunMismatchError
from loops.gap import GAPSettings
from loops.loop import LoopConfig, run_loop
from loops.strategies import parse_strategy, strategy_feature_spec
from oed.design import FeatureSpec, rank_pool
from oed.errors import InputError
from oed.io import read_structures, write_structures

DATA = Path(__file__).parent.parent / "data" / "ethanol"
SMALL_GAP = GAPSettings(n_max=4, l_max=3, n_sparse=20)
OED = [str(Path(sys.executable).with_name("oed"))]


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loopdata")
    write_structures(d / "pool.xyz", read_structures(DATA / "train.xyz")[:30])
    write_structures(d / "test_md.xyz", read_structures(DATA / "test_MD.xyz")[:6])
    return d


def config(files, out, **kw) -> LoopConfig:
    base = LoopConfig(pool=files / "pool.xyz", tests=(files / "test_md.xyz",), out=out, n_init=4, batch_size=3,
                      n_rounds=1, strategy="d-optimal", oracle="pool", e0s_file=DATA / "isolated_atoms.xyz",
                      workers=1, gap=SMALL_GAP)
    return replace(base, **kw)


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, ctime, unique_id FROM systems ORDER BY id").fetchall()


# -- settings: no fit ----------------------------------------------------------------------------------
def test_plain_selector_fingerprint_is_unchanged(files, tmp_path):
    # the keys and values an existing run directory recorded before strategies took a space
    fp = config(files, tmp_path / "run").fingerprint("digest")
    assert fp["strategy"] == "d-optimal" and fp["init_strategy"] == "d-optimal"
    assert fp["features"] == asdict(FeatureSpec())
    assert set(fp) == {"pool", "tests", "n_init", "batch_size", "strategy", "init_strategy", "oracle", "seed",
                       "test_limit", "reg", "features", "model", "model_settings"}
    assert config(files, tmp_path, init_strategy="fps").fingerprint("d")["init_strategy"] == "fps"


def test_strategies_are_parsed_as_compare_parses_them(files, tmp_path):
    cfg = config(files, tmp_path, strategy="lcmd@gap-gp+forces")
    cfg.validate()
    spec = cfg.spec()
    # the same feature spec oed compare builds for it: the GAP's own, whitened by K_MM/delta^2
    assert cfg.feature_spec(spec) == strategy_feature_spec(parse_strategy("lcmd@gap-gp+forces"), "gap", SMALL_GAP)
    assert cfg.feature_spec(spec).prior == "kmm" and cfg.feature_spec(spec).forces
    # a selector without @space keeps the run's features exactly
    plain = config(files, tmp_path, features=FeatureSpec(forces=True))
    assert plain.feature_spec(plain.spec()) == FeatureSpec(forces=True)
    # model-driven strategies start at random; a model-driven initial design is refused
    for name in ("gap-variance", "lfab", "lfab-top@gap-kernel"):
        driven = config(files, tmp_path, strategy=name)
        driven.validate()
        assert driven.initial_strategy == "random" and driven.fingerprint("d")["init_strategy"] == "random"
    with pytest.raises(InputError, match="round 0 has none"):
        config(files, tmp_path, strategy="lfab", init_strategy="gap-variance").validate()
    for bad, match in (("lcmd@nowhere", "unknown feature space"), ("magic", "unknown"),
                       ("lfab@soap+forces", "energy-row space")):
        with pytest.raises(InputError, match=match):
            config(files, tmp_path, strategy=bad).validate()
    with pytest.raises(InputError, match="unknown"):  # the exploring loop takes selector names only
        config(files, tmp_path, strategy="lfab", explore="md").validate()


# -- loops: real fits ------------------------------------------------------------------------------------
@pytest.mark.integration  # GAP kernel features of 30 configurations and two gap_fit runs: ~30 s on 2 busy cores
def test_lcmd_in_the_gap_prior_space_runs_and_resumes(files, tmp_path):
    out = tmp_path / "run"
    cfg = config(files, out, strategy="lcmd@gap-gp")
    results = run_loop(cfg, log=quiet, progress=False)
    assert [r["n_labelled"] for r in results] == [4, 7]
    assert [r["strategy"] for r in results] == ["lcmd@gap-gp", "lcmd@gap-gp"]
    picks = json.loads((out / "selections" / "lcmd@gap-gp" / "seed0.json").read_text())
    assert picks["rounds"] == [4, 3] and len(set(picks["selected"])) == 7
    assert all(np.isfinite(r["errors"]["test_md"]["force_mae"]) for r in results)
    assert run_loop(cfg, log=quiet, progress=False) == results  # resumed: nothing to do
    assert json.loads((out / "selections" / "lcmd@gap-gp" / "seed0.json").read_text()) == picks
    with pytest.raises(RunMismatchError, match="strategy"):
        run_loop(replace(cfg, strategy="lcmd@gap-gp+forces"), log=quiet, progress=False)


@pytest.mark.integration  # five gap_fit runs, two Δ-GAP fits, ~40 xTB labels: ~75 s on 2 busy cores
def test_lfab_loop_labels_cheaply_apart_and_resumes_without_relabelling(files, tmp_path):
    out = tmp_path / "run"
    # the oracle is GFN2-xTB too: labels.db exists and can be checked for relabelling
    cfg = config(files, out, strategy="lfab", oracle="xtb:gfn2-xtb", e0s_file=None, n_init=5, batch_size=3)
    results = run_loop(cfg, log=quiet, progress=False)
    assert [r["n_labelled"] for r in results] == [5, 8]
    assert [r["strategy"] for r in results] == ["random", "lfab"]
    # round 0 is random (no model yet), charged no cheap label; round 1 cheap-labelled every candidate
    # (25 left) and the 5 labelled configurations
    assert results[0]["cheap_labels"] == 0 and results[1]["cheap_labels"] == 30
    assert results[1]["cheap_failed"] == 0 and results[1]["cheap_seconds"] > 0
    record = json.loads((out / "selections" / "lfab" / "seed0.cheap.json").read_text())
    assert list(record["rounds"]) == ["1"] and record["rounds"]["1"]["cheap_computed"] == 30
    assert len(record["rounds"]["1"]["picks"]) == 3 and record["rounds"]["1"]["n_delta"] == 5
    labels, cheap = rows(out / "labels.db"), rows(out / "cheap_labels.db")
    assert len(labels) == 8  # the E0s are in e0s.json
    assert len(cheap) == 30

    assert run_loop(cfg, log=quiet, progress=False) == results  # resumed: nothing labelled again
    assert rows(out / "labels.db") == labels and rows(out / "cheap_labels.db") == cheap

    more = run_loop(replace(cfg, n_rounds=2), log=quiet, progress=False)
    assert [r["n_labelled"] for r in more] == [5, 8, 11] and more[:2] == results
    record = json.loads((out / "selections" / "lfab" / "seed0.cheap.json").read_text())
    assert record["rounds"]["2"]["cheap_computed"] == 0  # every candidate had its cheap label
    assert rows(out / "cheap_labels.db") == cheap
    after = rows(out / "labels.db")
    assert after[:8] == labels and len(after) == 11


# -- oed rank ------------------------------------------------------------------------------------------
def oed(*args, check=True):
    proc = subprocess.run(OED + [str(a) for a in args], check=False, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"oed {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.integration  # SOAP of the pool in three subprocesses: tens of seconds
def test_rank_cli_lcmd_and_ggfps(files, tmp_path):
    pool = files / "pool.xyz"
    res = json.loads(oed("rank", pool, "--budget", 5, "--strategy", "lcmd", "--json").stdout)
    assert res["strategy"] == "lcmd" and len(set(res["selected"])) == 5
    assert all(0 <= i < 30 for i in res["selected"])
    proc = oed("rank", pool, "--budget", 5, "--strategy", "ggfps", check=False)
    assert proc.returncode == 2 and "--force-norms" in proc.stderr and "Traceback" not in proc.stderr
    # GGFPS draws its first pick in proportion to ||F||: the one configuration carrying the force comes first
    norms = np.full(30, 1e-9)
    norms[17] = 5.0
    np.save(tmp_path / "norms.npy", norms)
    res = json.loads(oed("rank", pool, "--budget", 4, "--strategy", "ggfps", "--force-norms",
                         tmp_path / "norms.npy", "--json").stdout)
    assert res["selected"][0] == 17 and len(set(res["selected"])) == 4


@pytest.mark.filterwarnings("ignore:the pool holds 3 configuration")
def test_rank_pool_posterior_selectors_and_force_norms(files, tmp_path):
    frames = read_structures(files / "pool.xyz")
    cache = {"cache_dir": tmp_path}  # the SOAP features once for all the rankings
    for name in ("lcmd", "kmeans++"):
        ranking = rank_pool(frames, 5, strategy=name, train=frames[:3], **cache)
        assert len(set(ranking.selected.tolist())) == 5 and not set(ranking.selected.tolist()) & {0, 1, 2}
    norms = np.linspace(0.1, 3.0, 30)
    # the training configurations leave the candidates; the norms follow their pool indices
    ranking = rank_pool(frames, 4, strategy="ggfps", train=frames[:3], force_norms=norms, **cache)
    assert len(set(ranking.selected.tolist())) == 4 and min(ranking.selected) >= 3
    for kw, match in (({"strategy": "ggfps"}, "force norms"), ({"strategy": "ggfps", "force_norms": norms[:10]},
                      "10 values for a pool of 30"), ({"strategy": "fps", "force_norms": norms}, "does not use")):
        with pytest.raises(InputError, match=match):
            rank_pool(frames, 4, **kw, **cache)
