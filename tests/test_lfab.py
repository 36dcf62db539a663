"""LFaB and GGFPS with a cheap oracle: cheap labels apart from the DFT ones, the Δ-model, the proxy error,
error-weighted batches and the cost a comparison charges (real GFN2-xTB via tblite, real gap_fit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from loops.cheap import CheapLabels, dft_label_seconds
from loops.gap import GAPModel, GAPSettings
from loops.lfab import (
    ForceNormStrategy,
    LFaBStrategy,
    error_weighted_kmeans,
    pick_batch,
    proxy_errors,
)
from loops.oracles import average_e0s, bare
from loops.strategies import Features, RoundContext, make_strategy, parse_strategy
from loops.xtb import label_many_xtb
from oed.design import FeatureSpec, fit_selector
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES

DATA = Path(__file__).parent.parent / "data" / "ethanol"
#: gap_fit in a second or two on a handful of ethanol configurations.
SMALL_GAP = GAPSettings(n_max=4, l_max=3, n_sparse=30, two_body_delta=None, rnd_seed=1)
N_POOL, N_LABELLED = 12, 4
#: A constant the "DFT" surface of the exact-cheap case adds to the xTB energies, eV.
OFFSET = 3.0


@pytest.fixture(scope="module")
def pool():
    """12 bare ethanol configurations and a 13th with two H atoms 0.05 Å apart (xTB refuses it)."""
    frames = read(DATA / "train.xyz", f":{N_POOL}")
    squashed = frames[0].copy()
    squashed.positions[-1] = squashed.positions[-2] + [0.05, 0.0, 0.0]
    return [bare(a, i) for i, a in enumerate(frames + [squashed])]


@pytest.fixture(scope="module")
def xtb(pool):
    """Direct GFN2-xTB labels of the first 12 (energies eV, forces eV/Å)."""
    results = label_many_xtb(pool[:N_POOL], workers=1, progress=False)
    assert all(r.ok for r in results)
    return [r.atoms for r in results]


@pytest.fixture(scope="module")
def exact_case(pool, xtb, tmp_path_factory):
    """An oracle equal to xTB + OFFSET (forces: xTB's) and the GAP M fitted on its first 4 labels."""
    labels = {}
    for i in range(N_LABELLED):
        a = bare(pool[i], i)
        a.info[REF_ENERGY] = float(xtb[i].info[REF_ENERGY]) + OFFSET
        a.arrays[REF_FORCES] = np.array(xtb[i].arrays[REF_FORCES])
        labels[i] = a
    train = list(labels.values())
    model = GAPModel(SMALL_GAP).fit(train, e0s=average_e0s(train), workdir=tmp_path_factory.mktemp("m"))
    return labels, model


def _ctx(pool, labels, model, seed=1):
    return RoundContext(pool=pool, labels=labels, e0s={}, seed=seed, features=Features(pool), model=model)


# -- cheap labels -------------------------------------------------------------------------------------------
def test_cheap_labels_are_stored_apart_computed_once_and_failures_kept(pool, xtb, tmp_path):
    store = CheapLabels(pool, tmp_path / "cheap_labels.db")
    energies, forces = store.energies_forces(range(len(pool)))
    assert store.n_computed_ == len(pool)
    np.testing.assert_allclose(energies[:N_POOL], [a.info[REF_ENERGY] for a in xtb], rtol=0, atol=1e-8)
    np.testing.assert_allclose(forces[5], xtb[5].arrays[REF_FORCES], atol=1e-8)
    assert np.isnan(energies[-1]) and forces[-1] is None  # the squashed one: recorded as failed
    cost = store.cost()
    assert (cost.n_labels, cost.n_failed) == (len(pool), 1) and 0 < cost.seconds < 5
    assert store.cost([0, 1]).n_labels == 2 and store.cost([0, 1]).seconds < cost.seconds
    # resumed: nothing is recomputed, the failure is not retried, the cost is the stored one
    again = CheapLabels(pool, tmp_path / "cheap_labels.db")
    e2, _ = again.energies_forces(range(len(pool)))
    assert again.n_computed_ == 0 and again.cost() == cost
    np.testing.assert_array_equal(e2[:N_POOL], energies[:N_POOL])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cheap_labels.db"]
    with pytest.raises(InputError, match="must not share"):
        CheapLabels(pool, tmp_path / "labels.db")


def test_dft_label_seconds_measured_from_a_live_store_else_given(pool, tmp_path):
    assert dft_label_seconds(None, "pyscf:pbe/def2-svp") == (8.0, "given")
    store = CheapLabels(pool[:3], tmp_path / "dft.db")  # any LabelStore: rows with seconds
    store.ensure(range(3))
    seconds, source = dft_label_seconds(tmp_path / "dft.db", store.name)
    assert source == "measured (3 labels)" and seconds == pytest.approx(store.cost().seconds / 3)


# -- proxy error and batches ----------------------------------------------------------------------------------
def test_proxy_errors_by_hand():
    f_m = [np.zeros((2, 3)), np.ones((2, 3))]
    f_c = [np.full((2, 3), 0.5), None]
    errors = proxy_errors(np.array([1.0, 2.0]), f_m, np.array([0.2, np.nan]), f_c, np.array([0.4, 0.0]),
                          [np.full((2, 3), -0.25), np.zeros((2, 3))])
    assert errors[0] == pytest.approx(0.25) and np.isnan(errors[1])  # RMS of 0 − 0.5 + 0.25
    energy = proxy_errors(np.array([1.0]), f_m[:1], np.array([0.2]), f_c[:1], np.array([0.4]), None,
                          error="energy")
    assert energy[0] == pytest.approx(0.4 / 2)  # |1 − 0.2 − 0.4| / 2 atoms


def test_error_weighted_kmeans_covers_the_error_mass_where_top_k_crowds():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (10, 2)), rng.normal(0, 0.1, (10, 2)) + [10, 0]])
    errors = np.concatenate([1.0 + 0.01 * np.arange(10), 0.5 + 0.01 * np.arange(10)])
    top = pick_batch(2, X, errors, batch="top")
    kmeans = pick_batch(2, X, errors, batch="kmeans")
    assert sorted(top) == [8, 9]  # both in the high-error cluster
    assert sorted(kmeans) == [9, 19]  # the largest error of each cluster
    # the weights move the clusters to where error² is: a uniform line with errors growing as x⁴
    x = np.linspace(0, 1, 200)[:, None]
    weighted = error_weighted_kmeans(x, x[:, 0] ** 4, 4)
    plain = error_weighted_kmeans(x, np.ones(200), 4)
    assert x[weighted].mean() > x[plain].mean() + 0.1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # one distinct point, on purpose
def test_fill_up_takes_the_largest_remaining_errors_then_the_unscored():
    errors = np.array([np.nan, 0.5, np.nan, 0.2, 0.3])
    assert pick_batch(3, None, errors, batch="top").tolist() == [1, 4, 3]
    picks = pick_batch(5, None, errors, batch="top", seed=3)
    assert picks[:3].tolist() == [1, 4, 3] and sorted(picks[3:]) == [0, 2]
    X = np.zeros((5, 2))  # one point repeated: k-means makes one cluster, the fill-up the rest
    picks = pick_batch(4, X, errors, batch="kmeans")
    assert len(set(picks.tolist())) == 4 and picks[0] == 1 and set(picks[:3]) == {1, 4, 3}


# -- the strategy ---------------------------------------------------------------------------------------------------
def test_proxy_error_is_the_true_error_when_the_cheap_surface_is_exact_up_to_a_constant(pool, xtb, exact_case,
                                                                                       tmp_path):
    """Oracle = xTB + constant: Δ has zero forces, so the proxy error is M's force RMS error against the oracle."""
    labels, model = exact_case
    cand = list(range(N_LABELLED, N_POOL))
    strategy = LFaBStrategy(run_dir=tmp_path, seed=0)
    errors, info = strategy.score(cand, list(labels), _ctx(pool, labels, model))
    _, f_m = model.predict([pool[i] for i in cand])
    true = [np.sqrt(np.mean((f - xtb[i].arrays[REF_FORCES]) ** 2)) for f, i in zip(f_m, cand)]
    assert info["n_delta"] == N_LABELLED
    assert min(true) > 0.05  # a 4-configuration GAP is far from exact: the equality below is not 0 == 0
    np.testing.assert_allclose(errors, true, rtol=1e-5)
    assert not (tmp_path / "labels.db").exists()
    assert not list((tmp_path / "models").rglob("gap.xml"))  # the Δ-model's fit is not kept


def test_select_records_picks_and_cost_and_a_resumed_selection_computes_nothing(pool, exact_case, tmp_path):
    labels, model = exact_case
    cand = np.arange(N_LABELLED, len(pool))  # the squashed configuration among them: no cheap label
    strategy = make_strategy(parse_strategy("lfab"), None, run_dir=tmp_path, seed=0)
    picks = strategy.select(3, cand, list(labels), _ctx(pool, labels, model, seed=1))
    record = json.loads(strategy.record_path.read_text())["rounds"]["1"]
    assert record["picks"] == picks and len(set(picks)) == 3 and len(pool) - 1 not in picks
    assert record["proxy_errors"] == sorted(record["proxy_errors"], reverse=True)
    assert record["n_unscored"] == 1 and record["unit"] == "eV/Å"
    assert (record["cheap_computed"], record["cheap_labels"], record["cheap_failed"]) == (len(pool), len(pool), 1)
    assert strategy.cheap_cost(1).n_labels == len(pool) and strategy.cheap_cost(0).n_labels == 0
    again = make_strategy(parse_strategy("lfab"), None, run_dir=tmp_path, seed=0)
    assert again.select(3, cand, list(labels), _ctx(pool, labels, model, seed=1)) == picks
    record = json.loads(strategy.record_path.read_text())["rounds"]["1"]
    assert record["cheap_computed"] == 0 and record["cheap_labels"] == len(pool)
    assert CheapLabels(pool, tmp_path / "cheap_labels.db").cost().n_labels == len(pool)  # no row added


def test_ggfps_strategy_feeds_cheap_force_norms_to_the_selector(pool, xtb, tmp_path):
    spec = FeatureSpec()
    strategy = make_strategy(parse_strategy("ggfps"), spec, run_dir=tmp_path, seed=0)
    assert isinstance(strategy, ForceNormStrategy)
    features = Features(pool)
    ctx = RoundContext(pool=pool, labels={}, e0s={}, seed=0, features=features)
    cand = np.arange(len(pool))
    picks = strategy.select(len(pool), cand, [], ctx)
    X, _ = features.get(spec)
    norms = np.array([np.linalg.norm(a.arrays[REF_FORCES]) for a in xtb])
    direct = fit_selector("ggfps", N_POOL, X.subset(list(range(N_POOL))), force_norms=norms, seed=0)
    assert picks[:N_POOL] == [int(i) for i in direct.selected_idx_]
    assert picks[-1] == len(pool) - 1  # no cheap label, no norm: only the fill-up takes it
    assert strategy.cheap_cost(0).n_labels == len(pool)


def test_lfab_names_spaces_and_modes():
    from loops.compare import CompareConfig

    assert parse_strategy("lfab").model == "gap" and parse_strategy("lfab-top@gap-kernel").space == "gap-kernel"
    for bad in ("lfab@soap+forces", "lfab@mace"):
        with pytest.raises(InputError, match="energy-row space"):
            parse_strategy(bad)
    cfg = CompareConfig(pool=DATA / "train.xyz", tests=(DATA / "test_MD.xyz",), out=Path("unused"),
                        strategies=("lfab@gap-kernel",), mode="sequential", model_settings=SMALL_GAP)
    fspec = cfg.feature_spec(cfg.specs()[0])
    assert fspec.kind == "gap-kernel" and not fspec.forces
    assert make_strategy(cfg.specs()[0], fspec, run_dir=Path("unused")).spec == fspec
    with pytest.raises(InputError, match="use mode sequential"):
        CompareConfig(pool=DATA / "train.xyz", tests=(DATA / "test_MD.xyz",), out=Path("unused"),
                      strategies=("lfab",)).validate()
    with pytest.raises(InputError, match="dft_label_seconds"):
        CompareConfig(pool=DATA / "train.xyz", tests=(DATA / "test_MD.xyz",), out=Path("unused"),
                      dft_label_seconds=0).validate()


# -- a comparison ------------------------------------------------------------------------------------------------------
@pytest.mark.integration  # a sequential comparison with a live xTB oracle and seven gap_fit runs: ~65 s
def test_compare_charges_cheap_labels_and_never_stores_them_as_dft_labels(tmp_path):
    from ase.db import connect

    from loops.compare import CompareConfig, run_compare

    write(tmp_path / "pool.xyz", read(DATA / "train.xyz", ":16"))
    write(tmp_path / "test.xyz", read(DATA / "test_MD.xyz", ":5"))
    base = {"pool": tmp_path / "pool.xyz", "tests": (tmp_path / "test.xyz",), "out": tmp_path / "run",
            "strategies": ("lfab", "ggfps"), "budgets": (3, 6), "n_seeds": 1, "model_settings": SMALL_GAP,
            "mode": "sequential", "oracle": "xtb:gfn2-xtb", "pool_fraction": 1.0, "workers": 1}
    run_compare(CompareConfig(**base), progress=False, log=lambda m: None)
    out = tmp_path / "run"
    picks = {s: json.loads((out / "selections" / s / "seed0.json").read_text())["selected"] for s in ("lfab", "ggfps")}
    # the oracle is xTB too, so only the file keeps cheap and DFT labels apart: labels.db holds the picks alone
    rows = list(connect(str(out / "labels.db"), type="db").select())
    assert sorted(r.pool_index for r in rows) == sorted(set(picks["lfab"]) | set(picks["ggfps"]))
    assert len(list(connect(str(out / "cheap_labels.db"), type="db").select())) == 16
    for s in ("lfab", "ggfps"):
        cell = json.loads((out / "cells" / s / "seed0" / "k6.json").read_text())
        assert cell["train"] == picks[s][:6] and cell["n_labelled"] == 6
        assert cell["cheap_labels"] == 16 and cell["cheap_seconds"] > 0
    assert json.loads((out / "cells" / "lfab" / "seed0" / "k3.json").read_text())["cheap_labels"] == 0  # random
    assert json.loads((out / "cells" / "ggfps" / "seed0" / "k3.json").read_text())["cheap_labels"] == 16
    cost = (out / "cheap_cost.csv").read_text().splitlines()
    assert cost[0].startswith("strategy,seed,budget,dft_labels,cheap_labels") and len(cost) == 5
    summary = (out / "summary.md").read_text()
    assert "## Label cost" in summary and "measured (" in summary
    # extended by a round: the cheap labels are read back, none recomputed
    run_compare(CompareConfig(**{**base, "budgets": (3, 6, 9)}), progress=False, log=lambda m: None)
    record = json.loads((out / "selections" / "lfab" / "seed0.cheap.json").read_text())["rounds"]["2"]
    assert record["cheap_computed"] == 0 and record["cheap_labels"] == 16
    assert len(list(connect(str(out / "cheap_labels.db"), type="db").select())) == 16
