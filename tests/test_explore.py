"""MD exploration: physical-failure checks, trust levels, the on-disk candidate source, the exploring loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read, write

from loops.explore import (ExploreSettings, ExploreSource, PhysicalLimits, bonds_of, explore, md_stability,
                           physical_failure)
from loops.gap import GAPModel, GAPSettings
from loops.oracles import LabelBook, XTBOracle, bare
from loops.strategies import Features
from oed.errors import InputError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
SMALL = {"n_max": 4, "l_max": 3, "n_sparse": 50, "two_body_delta": None}


@pytest.fixture(scope="module")
def e0s() -> dict[str, float]:
    atoms = read(DATA / "isolated_atoms.xyz", ":")
    return {a.get_chemical_symbols()[0]: float(a.get_potential_energy()) for a in atoms}


@pytest.fixture(scope="module")
def train():
    return read(DATA / "train.xyz", "::50")  # 20 configurations


@pytest.fixture(scope="module")
def gap(train, e0s, tmp_path_factory) -> GAPModel:
    return GAPModel(GAPSettings(**SMALL)).fit(train, e0s=e0s, workdir=tmp_path_factory.mktemp("gap"))


def _check(atoms, start=None):
    start = start if start is not None else molecule("CH3CH2OH")
    return physical_failure(atoms, bonds_of(start), 0.0, 0.0, np.zeros((len(atoms), 3)))


def test_physical_failure_names_each_reason():
    eth = molecule("CH3CH2OH")
    assert len(bonds_of(eth)) == 8  # 2 C–C/C–O, 5 C–H, 1 O–H
    assert _check(eth.copy()) is None
    stretched = eth.copy()
    h = [i for i, s in enumerate(stretched.get_chemical_symbols()) if s == "H"][0]
    stretched.positions[h] += 1.2 * (stretched.positions[h] - stretched.positions[bonds_of(eth)[bonds_of(eth)[:, 1] == h][0, 0]])
    assert _check(stretched) in ("bond", "fragments")
    apart = eth.copy()
    apart.positions[h] += [8.0, 0.0, 0.0]
    assert _check(apart) == "fragments"
    clash = eth.copy()
    clash.positions[1] = clash.positions[0] + [0.2, 0.0, 0.0]
    assert _check(clash) == "close-contact"
    assert physical_failure(eth, bonds_of(eth), 0.0, 100.0, np.zeros((9, 3))) == "energy"
    assert physical_failure(eth, bonds_of(eth), 0.0, 0.0, np.full((9, 3), np.nan)) == "energy"
    assert physical_failure(eth, bonds_of(eth), 0.0, 5.0, np.zeros((9, 3)), PhysicalLimits(max_energy_change=1.0)) is None


def test_settings_are_checked():
    for bad in ({"uncertainty": "psychic"}, {"temperatures": ()}, {"temperatures": (-5.0,)}, {"md_steps": 0},
                {"timestep_fs": 0.0}, {"trust_lo": 5.0, "trust_hi": 1.0}):
        with pytest.raises(InputError):
            ExploreSettings(**bad).validate()
    assert ExploreSettings().trust == (1.5, 10.0)
    assert ExploreSettings(uncertainty="gap-variance", trust_hi=0.5).trust == (0.002, 0.5)


@pytest.mark.integration
def test_trust_levels_decide_candidates_and_stops(gap, train):
    starts = train[:2]
    base = {"temperatures": (300.0,), "md_steps": 40, "sample_every": 10, "starts": 2}
    # trust_hi below every γ: each trajectory stops at its first graded frame, nothing is a candidate
    cand, rec = explore(gap, starts, ExploreSettings(**base, trust_lo=0.0, trust_hi=1e-9), train, seed=0)
    assert cand == [] and rec["n_frames"] == 2
    assert [t["stopped"] for t in rec["trajectories"]] == ["trust-hi", "trust-hi"]
    assert not rec["converged"]
    # every frame between the levels: 4 graded frames per trajectory, all candidates, graded γ kept
    cand, rec = explore(gap, starts, ExploreSettings(**base, trust_lo=0.0, trust_hi=1e9), train, seed=0)
    assert len(cand) == rec["n_frames"] == 8 and rec["n_candidates"] == 8
    assert all(np.isfinite(f.info["uncertainty"]) and f.info["temperature"] == 300.0 for f in cand)
    assert rec["uncertainty_values"] == pytest.approx([f.info["uncertainty"] for f in cand], abs=1e-5)
    # nothing reaches trust_lo: converged
    cand, rec = explore(gap, starts, ExploreSettings(**base, trust_lo=1e8, trust_hi=1e9), train, seed=0)
    assert cand == [] and rec["converged"]


def test_gap_variance_uncertainty_is_positive(gap, train):
    cand, rec = explore(gap, train[:1], ExploreSettings(temperatures=(300.0,), md_steps=20, starts=1,
                                                        uncertainty="gap-variance", trust_lo=0.0, trust_hi=1e9),
                        train, seed=1)
    assert len(cand) == 2 and all(f.info["uncertainty"] > 0 for f in cand)
    with pytest.raises(InputError, match="committee"):
        explore(gap, train[:1], ExploreSettings(uncertainty="committee"), train, seed=1)


def test_md_stability_reports_time_to_failure(gap, train):
    res = md_stability(gap, train[:1], temperature=300.0, steps=20, timestep_fs=0.5)
    assert res["n"] == 1 and len(res["time_fs"]) == 1
    assert 0 < res["time_fs"][0] <= 10.0
    assert res["survived"] + sum(res["stopped"].values()) == 1


def test_explored_rounds_are_reread_in_order(gap, train, tmp_path):
    pool = [bare(a, i) for i, a in enumerate(train[:3])]
    book = LabelBook(XTBOracle(), None, pool)
    features = Features(list(pool))
    settings = ExploreSettings(temperatures=(300.0,), md_steps=20, starts=1, trust_lo=0.0, trust_hi=1e9)
    source = ExploreSource(tmp_path, settings, book, features)
    idx, rec = source.candidates(1, gap, pool, [0, 1, 2], train, seed=3)
    assert list(idx) == [3, 4] and rec["round"] == 1 and len(book.frames) == 5 == len(features.pool)
    assert book.frames[3].info["config_type"] == "explore_round1"
    # a resumed run rebuilds the same pool from the files, and does not explore round 1 again
    book2 = LabelBook(XTBOracle(), None, list(pool))
    source2 = ExploreSource(tmp_path, settings, book2, Features(list(pool)))
    idx2, rec2 = source2.candidates(1, None, pool, [0], train, seed=99)
    assert list(idx2) == [3, 4] and rec2 == rec
    assert np.allclose(book2.frames[4].positions, book.frames[4].positions)
    # the same keys as the first pass: labels made before a kill are found after it
    assert book2._keys == book._keys
    # killed between the candidates file and the record: the round is explored again
    (tmp_path / "explore" / "round1.json").unlink()
    source3 = ExploreSource(tmp_path, settings, LabelBook(XTBOracle(), None, list(pool)), Features(list(pool)))
    assert source3.offsets == {}


def test_a_converged_round_is_explored_again_with_longer_trajectories(gap, train, tmp_path):
    pool = [bare(a, i) for i, a in enumerate(train[:2])]
    book = LabelBook(XTBOracle(), None, pool)
    # nothing reaches trust_lo: every exploration is converged, so 10 steps → 20 → 40 (the cap)
    settings = ExploreSettings(temperatures=(300.0,), md_steps=10, max_md_steps=40, sample_every=5, starts=1,
                               trust_lo=1e8, trust_hi=1e9)
    source = ExploreSource(tmp_path, settings, book, Features(list(pool)))
    idx, rec = source.candidates(1, gap, pool, [0, 1], train, seed=0)
    assert len(idx) == 0 and rec["converged"] and rec["md_steps"] == 40
    assert [e["md_steps"] for e in rec["escalated"]] == [10, 20]
    assert rec["trajectories"][0]["steps"] == 40
    # the next round starts at the longer length and has nothing left to escalate
    _, rec2 = source.candidates(2, gap, pool, [0, 1], train, seed=1)
    assert rec2["md_steps"] == 40 and "escalated" not in rec2
    # without a cap a converged round is final, as before
    plain = ExploreSource(tmp_path / "plain", ExploreSettings(temperatures=(300.0,), md_steps=10, sample_every=5,
                                                              starts=1, trust_lo=1e8, trust_hi=1e9),
                          LabelBook(XTBOracle(), None, list(pool)), Features(list(pool)))
    _, rec3 = plain.candidates(1, gap, pool, [0, 1], train, seed=0)
    assert rec3["md_steps"] == 10 and "escalated" not in rec3
    with pytest.raises(InputError, match="max_md_steps"):
        ExploreSettings(md_steps=100, max_md_steps=50).validate()
    assert "max_md_steps" not in ExploreSettings().fingerprint()  # old run directories keep their fingerprint


@pytest.mark.integration
def test_exploring_loop_with_xtb_resumes_without_relabelling(tmp_path):
    """The CLI path: seeds → MD with the GAP → xTB labels; a rerun labels nothing and changes nothing."""
    from loops.loop import LoopConfig, run_loop
    from loops.store import LabelStore

    seeds, test = tmp_path / "seeds.xyz", tmp_path / "test.xyz"
    write(seeds, read(DATA / "train.xyz", "::200"))  # 5 seeds
    write(test, read(DATA / "test_MD.xyz", ":5"))
    config = LoopConfig(pool=None, tests=(test,), out=tmp_path / "run", n_init=5, batch_size=3, n_rounds=2,
                        strategy="fps", oracle="xtb:gfn2-xtb", workers=1, gap=GAPSettings(**SMALL),
                        init_from=seeds, explore="md",
                        exploration=ExploreSettings(temperatures=(300.0,), md_steps=40, starts=2, trust_lo=0.0,
                                                    trust_hi=1e9))
    results = run_loop(config, log=lambda m: None, progress=False)
    n = [r["n_labelled"] for r in results]
    assert len(n) == 3 and n[0] == 5 and all(0 < b - a <= 3 for a, b in zip(n, n[1:]))  # at most --batch a round
    assert results[0]["strategy"] == "seeds" and "exploration" in results[1]
    assert 0 < results[1]["exploration"]["n_candidates"] <= 8
    out = tmp_path / "run"
    assert json.loads((out / "stop.json").read_text())["reason"] == "rounds"
    phases = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    assert {p["phase"] for p in phases} == {"explore", "select", "label", "fit", "evaluate"}
    rows = len(LabelStore(out / "labels.db", "xtb:gfn2-xtb").status())
    assert rows == n[-1]
    again = run_loop(config, log=lambda m: None, progress=False)
    assert len(LabelStore(out / "labels.db", "xtb:gfn2-xtb").status()) == rows
    assert [r["errors"] for r in again] == [r["errors"] for r in results]
    with pytest.raises(InputError, match="pool"):
        LoopConfig(pool=None, tests=(test,), out=tmp_path / "x", n_init=1, batch_size=1, n_rounds=1).validate()


@pytest.mark.integration
def test_committee_force_deviation_grades_frames(train, e0s, tmp_path):
    from loops.committee import Committee

    committee = Committee("gap", GAPSettings(**SMALL), size=2, seed=0).fit(train, e0s=e0s, workdir=tmp_path)
    cand, rec = explore(committee, train[:1], ExploreSettings(temperatures=(300.0,), md_steps=20, starts=1,
                                                              uncertainty="committee", trust_lo=0.0, trust_hi=1e9),
                        train, seed=2)
    assert len(cand) == 2 and rec["unit"] == "eV/Å"
    assert all(0 < f.info["uncertainty"] < 10 for f in cand)


@pytest.mark.integration
def test_compare_reports_md_stability(tmp_path):
    from typer.testing import CliRunner

    from loops.cli import app

    write(tmp_path / "pool.xyz", read(DATA / "train.xyz", ":40"))
    write(tmp_path / "test.xyz", read(DATA / "test_MD.xyz", ":4"))
    r = CliRunner().invoke(app, ["compare", "--pool", str(tmp_path / "pool.xyz"), "--test", str(tmp_path / "test.xyz"),
                                 "--out", str(tmp_path / "cmp"), "--strategies", "random,fps", "--budgets", "10",
                                 "--seeds", "1", "--workers", "1", "--md-stability", "20"])
    assert r.exit_code == 0, r.output
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "## MD stability" in summary and "| fps | 10 |" in summary
    csv = (tmp_path / "cmp" / "md_stability.csv").read_text().splitlines()
    assert csv[0].startswith("strategy,seed,budget,mean_fs") and len(csv) == 3


@pytest.mark.integration
def test_committee_loop_explores_by_force_deviation_and_measures_calibration(tmp_path):
    from loops.loop import LoopConfig, run_loop

    seeds, test = tmp_path / "seeds.xyz", tmp_path / "test.xyz"
    write(seeds, read(DATA / "train.xyz", "::200"))
    write(test, read(DATA / "test_MD.xyz", ":6"))
    config = LoopConfig(pool=None, tests=(test,), out=tmp_path / "run", n_init=5, batch_size=2, n_rounds=1,
                        strategy="fps", oracle="xtb:gfn2-xtb", workers=1, gap=GAPSettings(**SMALL),
                        init_from=seeds, explore="md", committee=2,
                        exploration=ExploreSettings(temperatures=(300.0,), md_steps=20, starts=1,
                                                    uncertainty="committee", trust_lo=0.0, trust_hi=1e9))
    results = run_loop(config, log=lambda m: None, progress=False)
    assert len(results) == 2 and results[1]["n_labelled"] == 7
    explored = json.loads((tmp_path / "run" / "explore" / "round1.json").read_text())
    assert explored["uncertainty"] == "committee" and explored["unit"] == "eV/Å"
    cell = json.loads((tmp_path / "run" / "cells" / "fps" / "seed0" / "k7.json").read_text())
    assert cell["calibration"]["n"] == 6 and np.isfinite(cell["calibration"]["spearman"])
    assert (tmp_path / "run" / "cells" / "fps" / "seed0" / cell["calibration"]["plot"]).exists()
    with pytest.raises(InputError, match="--committee"):
        LoopConfig(pool=None, tests=(test,), out=tmp_path / "x", n_init=1, batch_size=1, n_rounds=1, init_from=seeds,
                   explore="md", exploration=ExploreSettings(uncertainty="committee")).validate()
