"""Oracles: any ASE calculator as the label source, the same oracle for label, loop and compare."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.lj import LennardJones

from loops.gap import GAPSettings
from loops.oracles import CalculatorOracle, LabelBook, bare, make_oracle, parse_oracle
from loops.parallel import Executor
from oed.errors import InputError
from oed.io import read_structures, write_structures

OED = str(Path(sys.executable).with_name("oed"))
LJ = "ase:ase.calculators.lj:LennardJones"
SMALL_GAP = GAPSettings(n_max=4, l_max=3, n_sparse=20)


@pytest.fixture(scope="module")
def files(tmp_path_factory, ethanol_dir):
    d = tmp_path_factory.mktemp("oracle")
    write_structures(d / "pool.xyz", read_structures(ethanol_dir / "train.xyz")[:24])
    # test labels from the same calculator, so errors are errors against the oracle
    test = read_structures(ethanol_dir / "test_MD.xyz")[:6]
    labelled = CalculatorOracle("ase.calculators.lj", "LennardJones", executor=Executor(workers=1, progress=False))
    write_structures(d / "test_lj.xyz", [r.atoms for r in labelled.label([bare(a) for a in test])])
    return d


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM systems").fetchone()[0]


def test_parse_oracle_names_every_kind_and_refuses_the_rest():
    assert parse_oracle("pool") == ("pool", ())
    assert parse_oracle("pyscf:pbe/def2-svp") == ("pyscf", ("pbe/def2-svp",))
    assert parse_oracle("xtb:gfn2-xtb") == ("xtb", ("gfn2-xtb",))
    assert parse_oracle(LJ + ':{"sigma": 1.2}') == ("ase", ("ase.calculators.lj", "LennardJones", {"sigma": 1.2}))
    for bad, message in [("orca:pbe", "oracle must be"), ("ase:ase.calculators.lj", "oracle must be"),
                         (LJ + ":{sigma", "not valid JSON"), (LJ + ":[1]", "JSON object")]:
        with pytest.raises(InputError, match=message):
            parse_oracle(bad)
    with pytest.raises(InputError, match="no ASE calculator"):
        make_oracle("ase:ase.calculators.lj:NoSuchCalculator")
    with pytest.raises(InputError, match="does not take"):
        make_oracle(LJ + ':{"not_a_parameter": 1}')


def test_cli_label_with_an_ase_calculator_writes_its_own_numbers(files, tmp_path):
    out = tmp_path / "lj.xyz"
    spec = LJ + ':{"sigma": 1.1, "epsilon": 0.02}'
    proc = subprocess.run([OED, "label", str(files / "pool.xyz"), "-o", str(out), "--oracle", spec, "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    frames, labelled = read_structures(files / "pool.xyz"), read_structures(out)
    assert len(labelled) == len(frames)
    for atoms, got in zip(frames, labelled):
        ref = atoms.copy()
        ref.calc = LennardJones(sigma=1.1, epsilon=0.02)
        assert got.info["REF_energy"] == pytest.approx(ref.get_potential_energy(), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(got.arrays["REF_forces"], ref.get_forces(), rtol=0, atol=1e-7)  # extxyz keeps 8 decimals
        assert got.info["level_of_theory"] == spec.replace('{"sigma": 1.1, "epsilon": 0.02}',
                                                           '{"epsilon": 0.02, "sigma": 1.1}')
    bad = subprocess.run([OED, "label", str(files / "pool.xyz"), "-o", str(tmp_path / "x.xyz"), "--oracle",
                          "ase:ase.calculators.lj:Nope"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no ASE calculator" in bad.stderr


def test_label_book_commits_each_label_once(files, tmp_path):
    pool = [bare(a, i) for i, a in enumerate(read_structures(files / "pool.xyz"))]
    oracle = make_oracle(LJ, executor=Executor(workers=1, progress=False))
    book = LabelBook(oracle, tmp_path / "labels.db", pool)
    first = book.labels([0, 3, 5])
    assert _rows(tmp_path / "labels.db") == 3 and all(first[i] is not None for i in (0, 3, 5))
    assert book.pending([0, 3, 5, 7]) == [7]
    again = LabelBook(oracle, tmp_path / "labels.db", pool).labels([5, 3, 7])
    assert _rows(tmp_path / "labels.db") == 4  # only 7 was new
    assert again[3].info["REF_energy"] == first[3].info["REF_energy"]


@pytest.mark.integration  # a loop and a comparison with real gap_fit
def test_the_same_oracle_drives_loop_and_compare(files, tmp_path):
    from loops.compare import CompareConfig, run_compare
    from loops.loop import LoopConfig, run_loop

    loop = LoopConfig(pool=files / "pool.xyz", tests=(files / "test_lj.xyz",), out=tmp_path / "loop", n_init=4,
                      batch_size=3, n_rounds=1, strategy="fps", oracle=LJ, workers=1, gap=SMALL_GAP)
    results = run_loop(loop, log=lambda m: None, progress=False)
    assert [r["n_labelled"] for r in results] == [4, 7]
    assert _rows(tmp_path / "loop" / "labels.db") == 7
    e0s = json.loads((tmp_path / "loop" / "e0s.json").read_text())
    assert e0s["oracle"] == LJ and set(e0s["e0s"]) == {"C", "H", "O"}  # a free LJ atom has energy 0
    assert all(v == 0.0 for v in e0s["e0s"].values())
    assert run_loop(loop, log=lambda m: None, progress=False) == results
    assert _rows(tmp_path / "loop" / "labels.db") == 7  # the rerun labelled nothing

    cmp = CompareConfig(pool=files / "pool.xyz", tests=(files / "test_lj.xyz",), out=tmp_path / "cmp",
                        strategies=("random", "fps"), budgets=(3, 5), n_seeds=1, oracle=LJ, workers=1,
                        model_settings=SMALL_GAP)
    rows = run_compare(cmp, progress=False, log=lambda m: None)
    assert {(r["strategy"], r["budget"]) for r in rows} == {(s, b) for s in ("random", "fps") for b in (3, 5)}
    n = _rows(tmp_path / "cmp" / "labels.db")
    assert 5 <= n <= 10
    run_compare(cmp, progress=False, log=lambda m: None)
    assert _rows(tmp_path / "cmp" / "labels.db") == n


def test_replay_oracle_states_the_pools_level_of_theory(ethanol_pool):
    from loops.oracles import ReplayOracle

    frames = [a.copy() for a in ethanol_pool[:3]]
    for a, b in zip(frames, ethanol_pool[:3]):
        a.calc = b.calc
    assert ReplayOracle(frames).level_of_theory == "pool"  # rMD17 frames state none
    for a in frames:
        a.info["level_of_theory"] = "gfn2-xtb"
    assert ReplayOracle(frames).level_of_theory == "gfn2-xtb"
    frames[0].info["level_of_theory"] = "pbe/def2-svp"
    assert ReplayOracle(frames).level_of_theory == "pool"  # mixed levels: none claimed
