"""The proxy-teacher forecast (loops.plan, ``oed plan --proxy``): its maths, its JSON, its cache, its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ase.io import read, write

from loops.plan import budget_to_reach, calibration_ratio, feasibility, fit_power_law, forecast_curves
from oed.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data" / "ethanol"


def test_calibration_ratio_is_the_geometric_mean_with_a_t_interval():
    r, lo, hi = calibration_ratio([2.0, 8.0], [1.0, 1.0])
    assert r == pytest.approx(4.0)
    assert lo < r < hi and lo * hi == pytest.approx(r * r)  # symmetric in log space
    assert calibration_ratio([3.0], [1.5]) == pytest.approx((2.0, 2.0, 2.0))
    with pytest.raises(InputError):
        calibration_ratio([1.0, 2.0], [1.0])
    with pytest.raises(InputError):
        calibration_ratio([0.0], [1.0])


def test_power_law_and_budget_to_reach():
    ks = [25, 50, 100, 200]
    errors = [300.0 * k ** -0.5 for k in ks]
    a, b = fit_power_law(ks, errors)
    assert (a, b) == pytest.approx((300.0, 0.5))
    k, source = budget_to_reach(ks, errors, 300.0 * 70 ** -0.5)
    assert source == "interpolated" and k == pytest.approx(70.0)
    k, source = budget_to_reach(ks, errors, 300.0 * 800 ** -0.5)
    assert source == "power-law extrapolation" and k == pytest.approx(800.0)
    k, source = budget_to_reach(ks, errors, 1000.0)
    assert source == "at or below the smallest budget" and k <= 25
    assert budget_to_reach(ks, [10.0, 11.0, 12.0, 13.0], 5.0)[0] == math.inf  # a rising curve never gets there


def test_forecast_curves_scale_by_the_ratio_and_bound_the_budget():
    proxy = {"random": {"force_mae": {25: [100.0, 110.0], 50: [70.0, 74.0], 100: [50.0, 52.0]},
                        "energy_mae": {25: [5.0, 5.0], 50: [3.0, 3.2], 100: [2.0, 2.1]}}}
    ratios = {"force_mae": (2.0, 1.8, 2.2), "energy_mae": (1.0, 1.0, 1.0)}
    out = forecast_curves(proxy, [25, 50, 100], ratios, target_error=90.0, pool_size=1000)["random"]
    assert out["force_mae"] == pytest.approx([210.0, 144.0, 102.0])
    assert all(lo < m < hi for lo, m, hi in zip(out["force_mae_lower"], out["force_mae"], out["force_mae_upper"]))
    b = out["budget_to_target"]
    assert b["lower"] < b["budget"] < b["upper"] and b["source"] == "power-law extrapolation"
    assert b["verdict"] == "feasible"
    tight = forecast_curves(proxy, [25, 50, 100], ratios, target_error=90.0, pool_size=int(b["budget"]))["random"]
    assert tight["budget_to_target"]["verdict"] == "uncertain"
    assert feasibility({"random": tight}, 90.0, 10)["best_strategy"] == "random"


@pytest.mark.integration  # real GFN2-xTB labels and real gap_fit: about a minute
def test_cli_plan_with_proxy_prints_the_json_shape_and_a_rerun_recomputes_nothing(tmp_path):
    from typer.testing import CliRunner

    from loops.cli import app

    pool = read(DATA / "train.xyz", ":40")
    pool[5].positions[1] = pool[5].positions[0] + [0.02, 0.0, 0.0]  # no proxy label: two atoms 0.02 Å apart
    write(tmp_path / "pool.xyz", pool)
    write(tmp_path / "seed.xyz", read(DATA / "train.xyz", "900:906"))
    write(tmp_path / "target.xyz", read(DATA / "test_MD.xyz", ":6"))
    args = ["plan", str(tmp_path / "pool.xyz"), "--proxy", "xtb:gfn2-xtb", "--budgets", "4,8",
            "--strategies", "random,fps", "--train", str(tmp_path / "seed.xyz"), "--target",
            str(tmp_path / "target.xyz"), "--seeds", "1", "--target-error", "150", "--e0s",
            str(DATA / "isolated_atoms.xyz"), "--out", str(tmp_path / "plan"), "--workers", "1", "--json",
            "--plot", str(tmp_path / "forecast.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["budgets"] == [4, 8]
    for name in ("random", "fps"):
        s = payload["strategies"][name]
        for metric in ("force_mae", "energy_mae"):
            assert len(s[metric]) == 2 and all(v > 0 for v in s[metric])
            assert all(lo <= v <= hi for lo, v, hi in zip(s[f"{metric}_lower"], s[metric], s[f"{metric}_upper"]))
        assert s["budget_to_target"]["verdict"] in ("feasible", "uncertain", "not within the pool")
    assert payload["calibration"]["n_labelled"] == 6
    assert payload["feasibility"]["target_error"] == 150
    cost = payload["cost"]
    assert cost["proxy_labels"] == 40 + 6 + 6 and cost["proxy_labels_failed"] == 1 and cost["fraction_of_dft"] > 0
    assert cost["proxy_label_wall_seconds"] > 0  # the wall time is charged where it exceeds the per-label sum
    assert (tmp_path / "forecast.png").stat().st_size > 0
    theory = payload["theory"]  # the closed-form sparse-GP check, beside the forecast
    assert theory["source"].startswith("sparse-GP posterior") and cost["theory_seconds"] > 0
    assert theory["seed_set"]["n"] == 6
    for level in ("dft", "proxy"):
        assert theory["seed_set"][level]["force_mae"] > 0 and theory["seed_set"][level]["noise_scale"] > 0
    assert theory["seed_set"]["cv_force_mae_ratio"] == pytest.approx(payload["calibration"]["force_mae_ratio"]["ratio"])
    assert theory["random"]["budgets"] == [4, 8] and all(v > 0 for v in theory["random"]["force_mae"])
    theory_stamp = (tmp_path / "plan" / "theory.json").stat().st_mtime_ns
    # The DFT labels of the pool never reach the simulation: its pool holds the proxy's level only.
    # The configuration the proxy could not label keeps its place (index 5), marked, so that the
    # simulated candidate draws are the DFT run's.
    simulated = read(tmp_path / "plan" / "proxy_pool.xyz", ":")
    assert len(simulated) == 40 and "no xtb:gfn2-xtb label" in simulated[5].info["label_failed"]
    assert {a.info["level_of_theory"] for i, a in enumerate(simulated) if i != 5} == {"xtb:gfn2-xtb"}
    cells = sorted((tmp_path / "plan" / "simulated" / "cells").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cells]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["strategies"] == payload["strategies"]
    assert [p.stat().st_mtime_ns for p in cells] == stamps  # nothing refitted
    assert "labelling with GFN2-xTB" not in again.stderr  # nothing relabelled
    assert (tmp_path / "plan" / "theory.json").stat().st_mtime_ns == theory_stamp  # nor the theory check
    assert json.loads(again.stdout.strip().splitlines()[-1])["cost"]["proxy_label_wall_seconds"] == pytest.approx(
        cost["proxy_label_wall_seconds"])  # the cached rerun keeps the first run's labelling time


def test_replayed_pool_answers_a_configuration_marked_failed_with_a_recorded_failure():
    from loops.oracles import LABEL_FAILED, ReplayOracle, bare

    frames = read(DATA / "train.xyz", ":3")
    marked = bare(frames[1])
    marked.info[LABEL_FAILED] = "no xtb:gfn2-xtb label"
    oracle = ReplayOracle([frames[0], marked, frames[2]])
    results = oracle.label([bare(a) for a in frames])
    assert [r.atoms is not None for r in results] == [True, False, True]
    assert "no xtb:gfn2-xtb label" in results[1].error
    unmarked = bare(frames[1])
    with pytest.raises(InputError, match="pool configuration 1 has no reference"):
        ReplayOracle([frames[0], unmarked])


def test_cli_plan_refuses_a_seed_set_without_labels_and_a_replayed_proxy(tmp_path):
    from typer.testing import CliRunner

    from loops.cli import app

    frames = read(DATA / "train.xyz", ":8")
    write(tmp_path / "pool.xyz", frames)
    bare = [a.copy() for a in frames]
    for a in bare:
        a.info.pop("REF_energy", None)
        a.arrays.pop("REF_forces", None)
        a.calc = None
    write(tmp_path / "bare.xyz", bare)
    base = ["plan", str(tmp_path / "pool.xyz"), "--budgets", "2,4", "--strategies", "random",
            "--out", str(tmp_path / "plan")]
    bad = CliRunner().invoke(app, [*base, "--proxy", "xtb:gfn2-xtb", "--train", str(tmp_path / "bare.xyz")])
    assert bad.exit_code == 2 and "no reference energy and forces" in bad.output
    bad = CliRunner().invoke(app, [*base, "--proxy", "pool"])
    assert bad.exit_code == 2 and "must compute labels" in bad.output
    assert not (tmp_path / "plan" / "proxy_labels.db").exists()  # refused before any label
