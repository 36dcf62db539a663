"""Committees of GAPs (real gap_fit, small settings): spread, calculator, calibration, resumption."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from loops.calibration import calibration, committee_calibration, force_errors, plot_calibration
from loops.committee import MEMBER_FILE, Committee, committee_spread
from loops.errors import ModelFitError
from loops.gap import GAPSettings
from loops.models import Model
from loops.parallel import Executor
from oed.errors import InputError, NotFittedError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
#: A GAP that gap_fit fits in about a second on 10 ethanol configurations (as tests/test_gap.py).
SMALL = GAPSettings(n_max=4, l_max=3, n_sparse=50, two_body_delta=None)
K = 3


@pytest.fixture(scope="module")
def e0s() -> dict[str, float]:
    atoms = read(DATA / "isolated_atoms.xyz", ":")
    return {a.get_chemical_symbols()[0]: float(a.get_potential_energy()) for a in atoms}


@pytest.fixture(scope="module")
def train(ethanol_pool):
    return ethanol_pool[:12]


@pytest.fixture(scope="module")
def fitted(train, e0s, tmp_path_factory) -> tuple[Committee, Path]:
    work = tmp_path_factory.mktemp("committee")
    committee = Committee("gap", SMALL, size=K, seed=0, subsample=0.75, executor=Executor(workers=2, progress=False))
    return committee.fit(train, e0s=e0s, workdir=work), work


@pytest.fixture(scope="module")
def test_md():
    return read(DATA / "test_MD.xyz", ":30")


# -- no fit needed ----------------------------------------------------------------------------
def test_bad_arguments():
    for kwargs, match in (({"size": 1}, "size >= 2"), ({"size": 2.0}, "size"), ({"seed": -1}, "seed"),
                          ({"subsample": 0.0}, "subsample"), ({"subsample": 1.5}, "subsample"),
                          ({"subsample": math.nan}, "subsample")):
        with pytest.raises(InputError, match=match):
            Committee("gap", SMALL, **kwargs)
    with pytest.raises(InputError, match="model"):
        Committee("no-such-model")
    with pytest.raises(NotFittedError):
        Committee("gap", SMALL).predict([read(DATA / "test_MD.xyz", "0")])


def test_protocol_and_feature_spec():
    committee = Committee("gap", SMALL, size=2)
    assert isinstance(committee, Model)
    assert committee.feature_spec(True) == committee.members[0].feature_spec(True)
    # member seeds differ: GAP rnd_seed = seed + m + 1
    assert [m.settings.rnd_seed for m in Committee("gap", SMALL, size=3, seed=5).members] == [6, 7, 8]
    mace = Committee("mace", size=3, seed=2)  # built without importing torch
    assert [m.settings.seed for m in mace.members] == [2, 3, 4] and mace.feature_spec(False) is None


def test_subsets():
    committee = Committee("gap", SMALL, size=4, seed=3, subsample=0.5)
    subsets = committee.subsets(20)
    assert all(len(s) == 10 and len(set(s.tolist())) == 10 and np.all(np.diff(s) > 0) for s in subsets)
    assert len({tuple(s.tolist()) for s in subsets}) == 4  # members see different data
    assert all(np.array_equal(a, b) for a, b in zip(subsets, committee.subsets(20)))  # deterministic
    assert [s.tolist() for s in Committee("gap", SMALL, size=2, subsample=0.1).subsets(3)] != [[], []]
    assert all(len(s) == 1 for s in Committee("gap", SMALL, size=2, subsample=0.1).subsets(3))  # >= 1 each
    assert all(len(s) == 7 for s in Committee("gap", SMALL, size=2, subsample=None).subsets(7))
    with pytest.raises(InputError, match="at least one"):
        committee.subsets(0)


def test_spread_by_hand():
    # two members, one atom's force differs by (0.3, 0.4, 0) eV/Å: each deviates by 0.25 from the mean
    f0 = np.zeros((2, 3))
    f1 = f0.copy()
    f1[1] = [0.3, 0.4, 0.0]
    out = committee_spread(np.array([[1.0], [1.2]]), [np.stack([f0, f1])], [2])
    assert out["energy"][0] == pytest.approx(1.1)
    assert out["sigma_energy"][0] == pytest.approx(0.1)
    assert out["sigma_energy_per_atom"][0] == pytest.approx(0.05)
    assert out["sigma_force_max"][0] == pytest.approx(0.25)
    assert out["sigma_force_mean"][0] == pytest.approx(0.125)
    np.testing.assert_allclose(out["forces"][0], [[0, 0, 0], [0.15, 0.2, 0]])
    with pytest.raises(InputError, match="forces of configuration 0"):
        committee_spread(np.array([[1.0], [1.2]]), [np.zeros((2, 3, 3))], [2])


def test_calibration_numbers(tmp_path):
    sigma = np.linspace(0.01, 1.0, 40)
    rng = np.random.default_rng(0)
    assert calibration(sigma, 2 * sigma)["spearman"] == pytest.approx(1.0)
    assert calibration(sigma, 2 * sigma)["scale"] == pytest.approx(2.0)
    result = calibration(sigma, rng.permutation(sigma), n_bins=4)
    assert abs(result["spearman"]) < 0.5
    assert [b["n"] for b in result["bins"]] == [10, 10, 10, 10]
    assert [b["sigma_rms"] for b in result["bins"]] == sorted(b["sigma_rms"] for b in result["bins"])
    assert math.isnan(calibration(np.ones(5), np.arange(5.0))["spearman"])
    for s, e, match in (([0.1, 0.2], [0.1, 0.2], "at least 3"), ([0.1, 0.2, 0.3], [0.1, 0.2], "differ"),
                        ([0.1, -0.2, 0.3], [0.1, 0.2, 0.3], ">= 0"), ([0.1, 0.2, 0.3], [0.1, math.inf, 0.3], "finite")):
        with pytest.raises(InputError, match=match):
            calibration(s, e)
    path = tmp_path / "cal" / "calibration.png"
    plotted = plot_calibration(sigma, 2 * sigma, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plotted["n"] == 40


def test_force_errors():
    atoms = read(DATA / "test_MD.xyz", "0")
    ref = atoms.get_forces()
    shifted = ref.copy()
    shifted[2] += [0.0, 0.3, 0.4]
    np.testing.assert_allclose(force_errors([shifted], [atoms]), [0.5])
    with pytest.raises(InputError, match="predicted forces"):
        force_errors([ref[:3]], [atoms])


# -- real gap_fit -----------------------------------------------------------------------------
def test_members_differ_and_mean_is_their_average(fitted, test_md):
    committee, work = fitted
    assert committee.loaded_ == [False] * K
    assert all((work / f"member{m}" / "gap.xml").is_file() for m in range(K))
    assert all(json.loads((work / f"member{m}" / MEMBER_FILE).read_text())["n_train"] == 9 for m in range(K))
    frames = test_md[:5]
    energies, forces = committee.member_predictions(frames)
    assert energies.shape == (K, 5) and forces[0].shape == (K, 9, 3)
    assert np.all(np.ptp(energies, axis=0) > 1e-4)  # eV: the members are different models
    mean_e, mean_f = committee.predict(frames)
    np.testing.assert_allclose(mean_e, energies.mean(axis=0), rtol=0, atol=1e-10)
    for j in range(5):
        np.testing.assert_allclose(mean_f[j], forces[j].mean(axis=0), rtol=0, atol=1e-10)
    u = committee.predict_uncertainty(frames)
    for key in ("sigma_energy", "sigma_energy_per_atom", "sigma_force_max", "sigma_force_mean"):
        assert u[key].shape == (5,) and np.all(np.isfinite(u[key])) and np.all(u[key] > 0), key
    assert np.all(u["sigma_force_max"] >= u["sigma_force_mean"])
    # a pickled committee (sent to an MD worker) predicts the same
    again = pickle.loads(pickle.dumps(committee))
    np.testing.assert_allclose(again.predict(frames)[0], mean_e, rtol=0, atol=1e-10)


@pytest.mark.integration
def test_resumption_loads_members(fitted, train, e0s):
    committee, work = fitted
    before = committee.predict(train[:3])[0]
    (work / "member1" / MEMBER_FILE).unlink()  # as if killed after member 1's gap_fit, before its record
    again = Committee("gap", SMALL, size=K, seed=0, subsample=0.75, executor=Executor(workers=1, progress=False))
    again.fit(train, e0s=e0s, workdir=work)
    assert again.loaded_ == [True, False, True]
    np.testing.assert_allclose(again.predict(train[:3])[0], before, rtol=0, atol=1e-8)
    # other training data: nothing is loaded
    other = Committee("gap", SMALL, size=2, seed=0, subsample=0.75, executor=Executor(workers=1, progress=False))
    other.fit(train[1:], e0s=e0s, workdir=work / "other")
    assert other.loaded_ == [False, False]


def test_calculator_in_md(fitted, train):
    committee, _ = fitted
    atoms = train[0].copy()
    atoms.calc = committee.as_calculator()
    e = atoms.get_potential_energy()
    assert e == pytest.approx(committee.predict([train[0]])[0][0], abs=1e-8)
    seen = []
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    for dyn in (VelocityVerlet(atoms, timestep=0.5 * units.fs),
                Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.02,
                         fixcm=False, rng=np.random.default_rng(1))):
        dyn.attach(lambda: seen.append(atoms.calc.results["force_deviation"]), interval=1)
        dyn.run(3)
    assert len(seen) == 8 and all(math.isfinite(s) and s > 0 for s in seen)
    assert len(set(seen)) > 1  # refreshed every step
    assert atoms.calc.results["energy_deviation"] > 0
    assert atoms.calc.results["force_deviations"].shape == (9,)


def test_sigma_larger_out_of_distribution(fitted, train):
    committee, _ = fitted
    stretched = read(DATA / "test_H_removal.xyz", "::4")  # O–H pulled from 0.7 to 3 Å
    s_train = committee.predict_uncertainty(train)["sigma_force_max"]
    s_far = committee.predict_uncertainty(stretched)["sigma_force_max"]
    assert np.median(s_far) > 1.5 * np.median(s_train)


def test_calibration_on_test_md(fitted, test_md, tmp_path):
    committee, _ = fitted
    result = committee_calibration(committee, test_md)
    assert result["n"] == 30 and math.isfinite(result["spearman"]) and -1 <= result["spearman"] <= 1
    assert math.isfinite(result["scale"]) and result["scale"] > 0
    assert sum(b["n"] for b in result["bins"]) == 30
    plot_calibration(result["sigma"], result["error"], tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 1000


def test_failed_member_fit_leaves_committee_unfitted(train, e0s, tmp_path):
    bad = GAPSettings(n_max=4, l_max=3, n_sparse=50, two_body_delta=None, sparse_method="no_such_method")
    committee = Committee("gap", bad, size=2, executor=Executor(workers=1, progress=False))
    with pytest.raises(ModelFitError, match="gap_fit"):
        committee.fit(train[:4], e0s=e0s, workdir=tmp_path)
    assert not (tmp_path / "member0" / MEMBER_FILE).exists()
    with pytest.raises(NotFittedError):
        committee.predict(train[:1])
