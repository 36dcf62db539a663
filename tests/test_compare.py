"""Strategy comparison: replay oracle, statistics, resume, Dask, sequential mode, CLI (real gap_fit)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from loops.compare import CompareConfig, run_compare
from loops.oracles import ReplayOracle, bare
from loops.strategies import candidates, eligible
from loops.errors import RunMismatchError
from loops.gap import GAPSettings
from loops.report import Curve, aulc, label_efficiency, paired_efficiency, read_results, render_summary, t_interval
from oed.errors import InputError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
#: gap_fit in about a second on a handful of ethanol configurations.
SMALL_GAP = GAPSettings(n_max=4, l_max=3, n_sparse=30)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.xyz"
    write(path, read(DATA / "train.xyz", ":40"))
    return path


@pytest.fixture(scope="module")
def test_file(tmp_path_factory) -> Path:
    """Ten ethanol and ten methanol test configurations, tagged by config_type."""
    path = tmp_path_factory.mktemp("tests") / "test_mixed.xyz"
    frames = read(DATA / "test_MD.xyz", ":10")
    for a in frames:
        a.info["config_type"] = "ethanol"
    methanol = [a for a in read(DATA / "train_eth_meth.xyz", ":") if a.info.get("config_type") == "methanol"][:10]
    write(path, frames + methanol)
    return path


def _config(pool, tests, out, **kw) -> CompareConfig:
    base = dict(pool=pool, tests=tuple(tests), out=out, strategies=("random", "fps", "d-optimal"), budgets=(4, 8),
                n_seeds=2, model_settings=SMALL_GAP, e0s_file=DATA / "isolated_atoms.xyz", workers=1,
                pool_fraction=0.75)
    base.update(kw)
    return CompareConfig(**base)


# -- statistics against hand computations -------------------------------------------------------------
def test_t_interval_matches_hand_computation():
    # x = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.29099; t(0.975, 3 dof) = 3.18245 (tables)
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(3.18245 * math.sqrt(5 / 3) / 2, rel=1e-5)
    mean, half = t_interval([7.0])
    assert mean == 7.0 and math.isnan(half)
    with pytest.raises(InputError):
        t_interval([])


def test_label_efficiency_and_aulc_on_a_power_law():
    budgets, errors = [10, 100, 1000], [100.0, 10.0, 1.0]  # error = 1000 / budget
    # an error of 10**1.5 is reached by the reference at budget 10**1.5 = 31.62: ratio 3.162 at k = 10
    eff = label_efficiency(10**1.5, 10, budgets, errors)
    assert eff.ratio == pytest.approx(10**0.5) and eff.bound == ""
    assert label_efficiency(0.5, 100, budgets, errors).bound == ">"  # better than the reference's best
    assert label_efficiency(500.0, 10, budgets, errors).bound == "<"  # worse than its worst
    # mean of log10(error) over log10(budget) from 1 to 3 is 1 → 10 meV
    assert aulc(budgets, errors) == pytest.approx(10.0)
    assert aulc([50], [3.0]) == 3.0


def test_paired_efficiency_is_computed_within_each_seed():
    budgets = (10, 100, 1000)
    # seed 0's reference is 10x worse than seed 1's; the strategy halves each seed's error at k = 100
    ref = Curve(budgets, {b: {0: 10000.0 / b, 1: 1000.0 / b} for b in budgets})
    strat = Curve(budgets, {b: {0: 5000.0 / b, 1: 500.0 / b} for b in budgets})
    g, lo, hi, n = paired_efficiency(strat, ref, 100)
    assert n == 2 and g == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    # pooled means would mix the seeds' scales; within seeds the answer is exactly 2 for both
    worse = Curve(budgets, {b: {0: 20000.0 / b, 1: 1000.0 / b} for b in budgets})
    g, lo, hi, n = paired_efficiency(worse, ref, 100)
    assert g == pytest.approx(0.5**0.5) and lo < g < hi
    assert paired_efficiency(strat, ref, 50) is None


# -- the replay oracle ---------------------------------------------------------------------------------
def test_replay_oracle_pool_is_bare_and_reveals_only_what_is_asked(pool_file):
    from oed.io import structure_hash

    frames = read(pool_file, ":")
    oracle = ReplayOracle(frames)
    pool = [bare(a, i) for i, a in enumerate(frames)]
    for atoms in pool:
        assert atoms.calc is None
        assert not any("energy" in k.lower() for k in atoms.info)
        assert set(atoms.arrays) == {"numbers", "positions"}
    got = oracle.label([pool[3], pool[7]])
    assert oracle.revealed_ == {structure_hash(pool[3]), structure_hash(pool[7])}
    assert got[0].atoms.info["REF_energy"] == pytest.approx(frames[3].get_potential_energy())
    np.testing.assert_allclose(got[1].atoms.arrays["REF_forces"], frames[7].get_forces())
    moved = pool[5].copy()
    moved.positions[0, 0] += 0.1
    (miss,) = oracle.label([moved])  # not in the pool: a recorded failure, never a made-up label
    assert not miss.ok and "not in the replayed pool" in miss.error


def test_replay_oracle_refuses_an_unlabelled_pool(tmp_path):
    frames = read(DATA / "train.xyz", ":3")
    bare = [a.copy() for a in frames]
    for a in bare:
        a.calc = None
    with pytest.raises(InputError, match="configuration 0 has no reference energy and forces"):
        ReplayOracle(bare)


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
@pytest.mark.parametrize("mode, strategies", [("oneshot", ("d-optimal", "fps", "random")),
                                              ("sequential", ("info-gain", "d-optimal"))])
def test_unpicked_labels_never_reach_selection_or_training(pool_file, test_file, tmp_path, mode, strategies):
    """Scramble every label nobody picked: a leak would change some pick or some error."""
    # one seed: the leak would show in any seed's picks or errors, and each seed costs a dozen gap_fit runs
    cfg = _config(pool_file, [test_file], tmp_path / "a", mode=mode, strategies=strategies, n_seeds=1)
    rows_a = run_compare(cfg, progress=False, log=lambda m: None)
    picked = set()
    for path in (tmp_path / "a" / "selections").rglob("seed*.json"):
        picked |= set(json.loads(path.read_text())["selected"])
    frames = read(pool_file, ":")
    rng = np.random.default_rng(0)
    scrambled = []
    for i, atoms in enumerate(frames):
        a = atoms.copy()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        if i not in picked:
            e, f = e + rng.normal(0, 50.0), rng.normal(0, 30.0, f.shape)
        a.info["REF_energy"], a.arrays["REF_forces"] = e, f
        scrambled.append(a)
    assert len(picked) < len(frames)  # something was left unpicked, so the test can fail
    poisoned = tmp_path / "poisoned.xyz"
    write(poisoned, scrambled)
    rows_b = run_compare(_config(poisoned, [test_file], tmp_path / "b", mode=mode, strategies=strategies, n_seeds=1),
                         progress=False, log=lambda m: None)
    key = lambda r: (r["strategy"], r["seed"], r["budget"], r["test_set"], r["metric"])
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(sorted(rows_a, key=key), sorted(rows_b, key=key)):
        assert key(ra) == key(rb)
        assert ra["value"] == pytest.approx(rb["value"], rel=1e-9, abs=1e-9)


# -- a full oneshot run: outputs, resume, extension ----------------------------------------------------------
@pytest.fixture(scope="module")
def oneshot_run(pool_file, test_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    cfg = _config(pool_file, [test_file, DATA.parent / "ethanol_pyscf" / "test_norm_mode_3005.xyz"], out, workers=2)
    rows = run_compare(cfg, progress=False, log=lambda m: None)
    return cfg, rows


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_outputs_are_tidy_and_complete(oneshot_run):
    cfg, rows = oneshot_run
    out = Path(cfg.out)
    table = read_results(out / "results.csv")
    assert len(table) == len(rows)
    sets = {r["test_set"] for r in table}
    assert sets == {"test_mixed", "test_mixed:ethanol", "test_mixed:methanol", "test_norm_mode_3005"}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            for budget in cfg.budgets:
                got = {r["metric"] for r in table if (r["strategy"], r["seed"], r["budget"], r["test_set"])
                       == (strategy, seed, budget, "test_mixed:methanol")}
                assert got == {"energy_mae", "energy_rmse", "force_mae", "force_rmse"}
    assert all(r["value"] > 0 for r in table)
    # methanol is out of distribution for an ethanol-only pool
    meth = np.mean([r["value"] for r in table if r["test_set"] == "test_mixed:methanol" and r["metric"] == "force_mae"])
    eth = np.mean([r["value"] for r in table if r["test_set"] == "test_mixed:ethanol" and r["metric"] == "force_mae"])
    assert meth > eth
    summary = (out / "summary.md").read_text()
    assert summary == render_summary(out / "results.csv", header=summary.split("\n\n")[1])
    assert "## test_mixed:methanol" in summary and "Label efficiency vs random" in summary
    assert (out / "learning_curve_test_mixed_methanol.png").stat().st_size > 10_000
    assert not (out / "models" / "random").exists() or not any((out / "models" / "random").rglob("gap.xml"))


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_seeds_share_candidates_and_picks_are_prefixes(oneshot_run, pool_file):
    cfg, _ = oneshot_run
    out = Path(cfg.out)
    frames = read(pool_file, ":")
    for seed in cfg.seeds:
        cand = set(candidates(eligible(frames), seed, cfg.pool_fraction))
        assert len(cand) == 30
        for strategy in cfg.strategies:
            picks = json.loads((out / "selections" / strategy / f"seed{seed}.json").read_text())["selected"]
            assert set(picks) <= cand and len(set(picks)) == len(picks) == max(cfg.budgets)
            for budget in cfg.budgets:
                cell = json.loads((out / "cells" / strategy / f"seed{seed}" / f"k{budget}.json").read_text())
                assert cell["train"] == picks[:budget]
    assert set(candidates(eligible(frames), 0, 0.75)) != set(candidates(eligible(frames), 1, 0.75))


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_rerun_does_nothing_and_extension_adds_only_new_cells(oneshot_run):
    cfg, rows = oneshot_run
    out = Path(cfg.out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    messages = []
    again = run_compare(cfg, progress=False, log=messages.append)
    assert any("nothing to do" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")} == stamps
    assert len(again) == len(rows)
    bigger = CompareConfig(**{**cfg.__dict__, "budgets": (4, 8, 12), "strategies": ("random", "fps")})
    run_compare(bigger, progress=False, log=lambda m: None)
    new = {p for p in (out / "cells").rglob("*.json")} - set(stamps)
    assert {(p.parent.parent.name, p.name) for p in new} == {("random", "k12.json"), ("fps", "k12.json")}
    # the old cells were not refitted (fps and random picks are prefixes of the longer ranking)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.parent.parent.name != "d-optimal")


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_other_settings_in_the_same_directory_are_refused(oneshot_run):
    cfg, _ = oneshot_run
    with pytest.raises(RunMismatchError, match="pool_fraction"):
        run_compare(CompareConfig(**{**cfg.__dict__, "pool_fraction": 0.5}), progress=False, log=lambda m: None)


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_dask_local_cluster_gives_the_same_cells(oneshot_run, tmp_path):
    from distributed import Client, LocalCluster

    cfg, rows = oneshot_run
    dask_cfg = CompareConfig(**{**cfg.__dict__, "out": tmp_path / "dask", "strategies": ("fps",), "n_seeds": 1})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        got = run_compare(dask_cfg, progress=False, log=lambda m: None, client=client)
    want = [r for r in rows if r["strategy"] == "fps" and r["seed"] == 0]
    key = lambda r: (r["budget"], r["test_set"], r["metric"])
    assert [key(r) for r in sorted(got, key=key)] == [key(r) for r in sorted(want, key=key)]
    for a, b in zip(sorted(got, key=key), sorted(want, key=key)):
        assert a["value"] == pytest.approx(b["value"], rel=1e-9)


# -- sequential mode and model-driven selection -------------------------------------------------------------
@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_sequential_gap_variance_picks_the_most_uncertain(pool_file, test_file, tmp_path):
    from loops.gap import GAPModel

    cfg = _config(pool_file, [test_file], tmp_path / "seq", mode="sequential", strategies=("gap-variance",),
                  n_seeds=1, keep_models=True)
    run_compare(cfg, progress=False, log=lambda m: None)
    picks = json.loads((tmp_path / "seq" / "selections" / "gap-variance" / "seed0.json").read_text())["selected"]
    assert len(picks) == 8 and len(set(picks)) == 8
    model = GAPModel.load(tmp_path / "seq" / "models" / "gap-variance" / "seed0" / "k4" / "gap.xml")
    frames = read(pool_file, ":")
    cand = [i for i in candidates(eligible(frames), 0, cfg.pool_fraction) if i not in picks[:4]]
    variance = model.predict_variance([frames[i] for i in cand])
    top = [cand[j] for j in np.argsort(-variance, kind="stable")[:4]]
    assert picks[4:] == top


# -- validation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"strategies": ("gap-variance",)}, "use mode sequential"),
    ({"select_with": "mace"}, "use mode sequential"),
    ({"oracle": "orca:pbe"}, "oracle must be"),
    ({"budgets": (4, 400)}, "exceeds the 30 candidates"),
    ({"strategies": ("random", "random")}, "repeated"),
    ({"strategies": ("best",)}, "unknown selection strategy"),
    ({"model": "nequip"}, "unknown model"),
    ({"pool_fraction": 1.5}, "pool_fraction"),
])
def test_bad_settings_give_one_clear_error(pool_file, test_file, tmp_path, changes, message):
    with pytest.raises(InputError, match=message):
        run_compare(_config(pool_file, [test_file], tmp_path / "bad", **changes), progress=False, log=lambda m: None)
    assert not (tmp_path / "bad" / "cells").exists()


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_cli_compare_runs_and_prints_the_summary(pool_file, tmp_path):
    from typer.testing import CliRunner

    from loops.cli import app

    args = ["compare", "--pool", str(pool_file), "--test", str(DATA / "test_H_removal.xyz"), "--out",
            str(tmp_path / "cli"), "--strategies", "random,fps", "--budgets", "3,6", "--seeds", "1",
            "--e0s", str(DATA / "isolated_atoms.xyz"), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test_H_removal" in result.output and "energy_mae" in result.output
    assert {r["strategy"] for r in read_results(tmp_path / "cli" / "results.csv")} == {"random", "fps"}
    bad = CliRunner().invoke(app, [*args[:-2], "--workers", "1", "--budgets", "3,x"])
    assert bad.exit_code == 2 and "--budgets must be a comma-separated list" in bad.output


def test_strategy_specs_name_their_feature_space():
    from loops.compare import parse_strategy

    s = parse_strategy("d-optimal@gap-kernel+forces")
    assert (s.name, s.space, s.forces, s.model) == ("d-optimal", "gap-kernel", True, None)
    s = parse_strategy("fps", select_with="soap", features="forces")
    assert (s.space, s.forces) == ("soap", True)
    assert parse_strategy("d-optimal@mace").model == "mace" and parse_strategy("gap-variance").model == "gap"
    with pytest.raises(InputError, match="unknown feature space"):
        parse_strategy("d-optimal@acsf")
    with pytest.raises(InputError, match="takes no feature space"):
        parse_strategy("gap-variance@soap")


def test_test_limit_keeps_every_config_type():
    from loops.cells import subsample
    from ase import Atoms

    frames = [Atoms("H", info={"config_type": "a" if i < 90 else "b"}) for i in range(100)]
    kept = subsample(frames, 5)
    assert [a.info["config_type"] for a in kept].count("b") == 5 and len(kept) == 10
    assert subsample(frames, None) is frames


@pytest.mark.integration  # full comparisons with real gap_fit: tens of seconds
def test_mace_trained_on_picks_made_in_its_own_feature_space(pool_file, test_file, tmp_path):
    """Cross-algorithm harness: MACE scored, selection with MACE descriptors round by round."""
    from loops.mace import MACESettings

    tiny = MACESettings(num_channels=4, max_ell=1, correlation=1, num_interactions=1, radial_mlp=(8,),
                        max_num_epochs=3, batch_size=2)
    cfg = _config(pool_file, [test_file], tmp_path / "mace", mode="sequential", model="mace", model_settings=tiny,
                  strategies=("d-optimal@mace",), n_seeds=1, budgets=(4, 6))
    rows = run_compare(cfg, progress=False, log=lambda m: None)
    assert {(r["budget"], r["test_set"]) for r in rows if r["metric"] == "force_mae"} == {
        (b, t) for b in (4, 6) for t in ("test_mixed", "test_mixed:ethanol", "test_mixed:methanol")}
    picks = json.loads((tmp_path / "mace" / "selections" / "d-optimal@mace" / "seed0.json").read_text())["selected"]
    assert len(set(picks)) == 6


def test_run_settings_compare_as_json(tmp_path):
    """A tuple in the settings (MACE's radial_mlp) is stored as a list: resuming must still match."""
    from loops.rundir import check_settings

    check_settings(tmp_path, {"model_settings": {"radial_mlp": (8, 8)}})
    check_settings(tmp_path, {"model_settings": {"radial_mlp": (8, 8)}})  # no error
    with pytest.raises(RunMismatchError, match="model_settings"):
        check_settings(tmp_path, {"model_settings": {"radial_mlp": (8, 16)}})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunMismatchError, match="corrupt"):
        check_settings(tmp_path, {})
