"""Test-time refinement in oed compare and the loop (loops.refine): real two-head MACE, real xTB, real rundirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from loops.refine import check_refinements, refinement_table, report_section
from loops.report import read_results, write_results
from oed.errors import InputError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
TINY = dict(num_channels=4, max_ell=1, correlation=1, num_interactions=1, radial_mlp=(8,), max_num_epochs=3,
            batch_size=2)


def test_refinements_a_model_cannot_do_are_refused_naming_what_they_need():
    check_refinements("mace", ("radius",))
    check_refinements("mace-ttt", ("radius", "ttt"))
    with pytest.raises(InputError, match="mace-ttt"):
        check_refinements("mace", ("ttt",))
    with pytest.raises(InputError, match="radius-graph"):
        check_refinements("gap", ("radius",))
    with pytest.raises(InputError, match="unknown refinement"):
        check_refinements("mace", ("cutoff",))
    with pytest.raises(InputError, match="repeated"):
        check_refinements("mace", ("radius", "radius"))


def _rows():
    rows = []
    for seed, (none, ttt) in enumerate([(100.0, 70.0), (120.0, 96.0)]):
        for refinement, value in (("none", none), ("ttt", ttt)):
            rows.append({"strategy": "random", "seed": seed, "budget": 10, "test_set": "ood", "metric": "force_mae",
                         "value": value, "refinement": refinement})
    return rows


def test_results_with_a_refinement_column_read_back_as_before_and_in_full(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, _rows())
    assert path.read_text().splitlines()[0].endswith(",refinement")
    plain = read_results(path)  # the models as trained: what every table and curve reads
    assert sorted(r["value"] for r in plain) == [100.0, 120.0] and "refinement" not in plain[0]
    assert {r["refinement"] for r in read_results(path, refinement=None)} == {"none", "ttt"}
    assert sorted(r["value"] for r in read_results(path, refinement="ttt")) == [70.0, 96.0]
    # a file without the column: every row is "none"
    write_results(path, [{k: v for k, v in r.items() if k != "refinement"} for r in _rows()[:1]])
    assert read_results(path, refinement=None)[0]["refinement"] == "none"


def test_refinement_table_pairs_the_change_by_seed():
    table = refinement_table(_rows())
    # changes -30 % and -20 %: mean -25.0 %, t(0.975, 1) = 12.706 × s/√2 = 12.706 × 5 = 63.5
    line = next(x for x in table.splitlines() if x.startswith("| ood"))
    assert "-25.0 % ± 63.5" in line and "| 110 ± 1.3e+02 |" in line
    assert refinement_table([r for r in _rows() if r["refinement"] == "none"]) == ""


def test_report_section_lists_each_round_as_trained_and_refined():
    records = [{"round": 0, "n_labelled": 6, "errors": {"ood": {"force_mae": 200.0}, "h": {"energy_mae": 10.0}},
                "refined": {"ttt": {"ood": {"force_mae": 150.0}, "h": {"energy_mae": 11.0}}}}]
    text = "\n".join(report_section(records))
    assert "| 0 | 6 | ood | 200.0 | 150.0 (-25.0 %) |" in text and "| 0 | 6 | h (energy) | 10.0 | 11.0 (+10.0 %) |" in text
    assert report_section([{"round": 0, "errors": {}}]) == []


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    write(root / "pool.xyz", read(DATA / "train.xyz", ":16"))
    write(root / "test_md.xyz", read(DATA / "test_MD.xyz", ":4"))
    methanol = [a for a in read(DATA / "train_eth_meth.xyz", ":") if a.info.get("config_type") == "methanol"][:4]
    write(root / "methanol.xyz", methanol)
    return root


@pytest.mark.integration  # two tiny two-head MACE fits and xTB labels of 8 test configurations
def test_compare_scores_each_cell_as_trained_with_radius_refinement_and_with_ttt(files, tmp_path):
    from loops.compare import CompareConfig, run_compare
    from loops.mace import MACESettings

    cfg = CompareConfig(pool=files / "pool.xyz", tests=(files / "test_md.xyz", files / "methanol.xyz"),
                        out=tmp_path / "run", strategies=("random",), budgets=(6, 10), n_seeds=1, model="mace-ttt",
                        model_settings=MACESettings(**TINY), e0s_file=DATA / "isolated_atoms.xyz", workers=1,
                        refinements=("radius", "ttt"))
    run_compare(cfg, progress=False, log=lambda m: None)
    rows = read_results(tmp_path / "run" / "results.csv", refinement=None)
    value = {(r["budget"], r["test_set"], r["refinement"]): r["value"] for r in rows if r["metric"] == "force_mae"}
    assert {k[2] for k in value} == {"none", "radius", "ttt"}
    for budget in (6, 10):
        for test_set in ("test_md", "methanol"):
            # TTT moved the representation; radius refinement kept 5 Å on these complete small-molecule graphs
            assert value[(budget, test_set, "ttt")] != value[(budget, test_set, "none")]
            assert value[(budget, test_set, "radius")] == pytest.approx(value[(budget, test_set, "none")], rel=1e-6)
    cell = json.loads((tmp_path / "run" / "cells" / "random" / "seed0" / "k10.json").read_text())
    assert set(cell["refined"]) == {"radius", "ttt"} and cell["refine_seconds"] > 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "## Test-time refinement" in summary and "| methanol | random | 10 |" in summary
    # the tables above it read the models as trained only
    assert len(read_results(tmp_path / "run" / "results.csv")) == len(rows) // 3
    # resuming with other refinements would leave cells without their rows: refused
    from loops.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match="refinements"):
        from dataclasses import replace

        run_compare(replace(cfg, refinements=("ttt",)), progress=False, log=lambda m: None)


@pytest.mark.integration
def test_loop_results_and_report_carry_the_refined_errors(files, tmp_path):
    from loops.loop import LoopConfig, run_loop
    from loops.mace import MACESettings
    from loops.runreport import render_report
    from loops.runview import open_run

    cfg = LoopConfig(pool=files / "pool.xyz", tests=(files / "methanol.xyz",), out=tmp_path / "loop", n_init=6,
                     batch_size=4, n_rounds=1, strategy="fps", oracle="pool", e0s_file=DATA / "isolated_atoms.xyz",
                     model="mace-ttt", model_settings=MACESettings(**TINY), workers=1, refinements=("ttt",))
    run_loop(cfg, progress=False, log=lambda m: None)
    results = json.loads((tmp_path / "loop" / "results.json").read_text())
    assert [r["n_labelled"] for r in results] == [6, 10]
    for r in results:
        assert np.isfinite(r["refined"]["ttt"]["methanol"]["force_mae"])
    report = render_report(open_run(tmp_path / "loop"), tmp_path / "loop" / "report.md").read_text()
    assert "## Test-time refinement" in report and "| 1 | 10 | methanol |" in report


def test_cli_ttt_with_gap_is_refused_before_any_work(files, tmp_path):
    from typer.testing import CliRunner

    from loops.cli import app

    result = CliRunner().invoke(app, ["compare", "--pool", str(files / "pool.xyz"), "--test", str(files / "methanol.xyz"),
                                      "--out", str(tmp_path / "c"), "--model", "gap", "--ttt"])
    assert result.exit_code != 0 and "mace-ttt" in result.output
    assert not (tmp_path / "c" / "config.json").exists()
