"""GAP back-end (real gap_fit, small settings), its calculator and feature space, and error metrics."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

from loops.errors import ModelFitError, SetupError
from loops.evaluate import error_metrics, evaluate
from loops.gap import BASELINE_SETTINGS, GAPModel, GAPSettings, find_gap_fit
from loops.models import Model, ModelWithVariance, make_model
from loops.settings import fingerprint_fields
from oed.errors import InputError, NotFittedError, UnknownElementError

DATA = Path(__file__).parent.parent / "data" / "ethanol"
#: Small enough to fit in about a second on 8 ethanol configurations.
SMALL = {"n_max": 4, "l_max": 3, "n_sparse": 50, "two_body_delta": None}  # SOAP only: 3 sparseX files


@pytest.fixture(scope="module")
def e0s() -> dict[str, float]:
    atoms = read(DATA / "isolated_atoms.xyz", ":")
    return {a.get_chemical_symbols()[0]: float(a.get_potential_energy()) for a in atoms}


@pytest.fixture(scope="module")
def train() -> list[Atoms]:
    return read(DATA / "train.xyz", ":8")


@pytest.fixture(scope="module")
def test_frames() -> list[Atoms]:
    return read(DATA / "test_MD.xyz", ":3")


@pytest.fixture(scope="module")
def test20() -> list[Atoms]:
    return read(DATA / "test_MD.xyz", ":20")


@pytest.fixture(scope="module")
def fitted(train, e0s, tmp_path_factory) -> GAPModel:
    return GAPModel(GAPSettings(**SMALL)).fit(train, e0s=e0s, workdir=tmp_path_factory.mktemp("gap"))


def _mae(pred: list[np.ndarray], frames: list[Atoms]) -> float:
    return float(np.mean(np.abs(np.concatenate(pred) - np.concatenate([a.get_forces() for a in frames]))))


# -- settings ----------------------------------------------------------------------------------
def test_settings_validation():
    with pytest.raises(SetupError, match="cutoff"):
        GAPSettings(cutoff=-1.0)
    with pytest.raises(SetupError, match="n_max"):
        GAPSettings(n_max=0)
    with pytest.raises(SetupError, match="n_sparse"):
        GAPSettings(n_sparse=2.5)
    with pytest.raises(SetupError, match="cutoff_transition_width"):
        GAPSettings(cutoff=1.0, cutoff_transition_width=1.0)
    with pytest.raises(SetupError, match="sparse_method"):
        GAPSettings(sparse_method="cur points")
    with pytest.raises(SetupError, match="rnd_seed"):
        GAPSettings(rnd_seed=0)  # gap_fit aborts on seed 0
    with pytest.raises(SetupError, match="two_body_delta"):
        GAPSettings(two_body_delta=0.0)
    with pytest.raises(SetupError, match="two_body_theta"):
        GAPSettings(two_body_delta=1.0, two_body_theta=-0.5)
    with pytest.raises(SetupError, match="two_body_n_sparse"):
        GAPSettings(two_body_n_sparse=0)
    with pytest.raises(SetupError, match="diagonal_radial"):
        GAPSettings(diagonal_radial="yes")
    with pytest.raises(SetupError, match=r"GAPSettings.timeout_s must be None or a positive finite number, got 0"):
        GAPSettings(timeout_s=0)
    assert GAPSettings(timeout_s=None).timeout_s is None


def test_timeout_changes_no_fingerprint():
    # a time limit changes no result: run directories must not refuse a resume over it
    assert fingerprint_fields(GAPSettings(timeout_s=5.0)) == fingerprint_fields(GAPSettings())
    assert "timeout_s" not in fingerprint_fields(GAPSettings()) and "n_sparse" in fingerprint_fields(GAPSettings())


def test_command_one_descriptor_per_species_capped(e0s):
    argv = GAPSettings(n_sparse=200, two_body_delta=None).command(
        "tr.xyz", "gap.xml", e0s, ["O", "H", "C"], n_envs={"H": 600, "C": 200, "O": 100}, executable="gf"
    )
    assert argv[0] == "gf" and "at_file=tr.xyz" in argv and "gp_file=gap.xml" in argv
    gap = next(a for a in argv if a.startswith("gap={"))
    descs = gap[len("gap={"):-1].split(" : ")
    assert [d.split()[-1] for d in descs] == ["Z=1", "Z=6", "Z=8"]
    assert [d.split("n_sparse=")[1].split()[0] for d in descs] == ["200", "200", "100"]
    assert all("species_Z={{1 6 8}}" in d and "add_species=F" in d for d in descs)
    e0 = next(a for a in argv if a.startswith("e0="))
    assert e0 == f"e0={{H:{e0s['H']!r}:C:{e0s['C']!r}:O:{e0s['O']!r}}}"  # N not in the species: left out
    with pytest.raises(SetupError, match="Si"):
        GAPSettings().command("tr.xyz", "gap.xml", e0s, ["Si"])


def test_command_two_body_only_for_pairs_with_data(e0s):
    settings = GAPSettings(n_sparse=200, two_body_delta=2.0, two_body_n_sparse=30, diagonal_radial=True)
    counts = {("H", "H"): 100, ("C", "H"): 12, ("H", "O"): 50, ("C", "C"): 40, ("O", "C"): 60}  # no O-O
    argv = settings.command("tr.xyz", "gap.xml", e0s, ["H", "C", "O"], pair_counts=counts)
    descs = next(a for a in argv if a.startswith("gap={"))[len("gap={"):-1].split(" : ")
    two_body = [d for d in descs if d.startswith("distance_2b")]
    zz = [tuple(int(w.split("=")[1]) for w in d.split() if w.startswith(("Z1=", "Z2="))) for d in two_body]
    assert zz == [(1, 1), (1, 6), (1, 8), (6, 6), (6, 8)]  # either key order counts, O-O left out
    # a single O-O pair spans no distance range: gap_fit's uniform sparsification would abort
    single = settings.command("tr.xyz", "gap.xml", e0s, ["H", "C", "O"], pair_counts={**counts, ("O", "O"): 1})
    assert sum(a.count("distance_2b Z1=8 Z2=8") for a in single) == 0
    assert [d.split("n_sparse=")[1].split()[0] for d in two_body] == ["30", "12", "30", "30", "30"]
    assert all("add_species=F" in d and "delta=2.0" in d and "theta_uniform=0.5" in d for d in two_body)
    soap = [d for d in descs if d.startswith("soap")]
    assert len(soap) == 3 and all("diagonal_radial=T" in d and d.split()[-1].startswith("Z=") for d in soap)
    every_pair = settings.command("tr.xyz", "gap.xml", e0s, ["H", "O"])  # no counts: every pair
    assert sum(a.count("distance_2b") for a in every_pair) == 3
    plain = GAPSettings(**BASELINE_SETTINGS).command("tr.xyz", "gap.xml", e0s, ["H", "C", "O"], pair_counts=counts)
    assert not any("distance_2b" in a or "diagonal_radial" in a for a in plain)  # SOAP only


def test_defaults_are_the_tuned_settings_and_the_baseline_differs():
    tuned, baseline = GAPSettings(), GAPSettings(**BASELINE_SETTINGS)
    assert tuned.diagonal_radial and tuned.two_body_delta is not None and tuned.n_max > baseline.n_max
    assert not baseline.diagonal_radial and baseline.two_body_delta is None


# -- fit / predict -------------------------------------------------------------------------------
def test_fit_attributes_and_files(fitted):
    assert fitted.species_ == ("H", "C", "O")
    assert fitted.n_train_ == 8
    assert set(fitted.e0s_) == {"H", "C", "O"}
    work = fitted.potential_file_.parent
    assert fitted.potential_file_.name == "gap.xml" and fitted.potential_file_.is_file()
    assert (work / "train.xyz").is_file() and (work / "gap_fit.log").is_file()
    assert len(list(work.glob("gap.xml.sparseX.*"))) == 3  # one descriptor per species
    first = read(work / "train.xyz", 0)
    assert "REF_energy" in first.info and "REF_forces" in first.arrays


def test_predict_shapes_accuracy_and_no_mutation(fitted, train, test_frames):
    frames = train[:3] + test_frames
    before = [(a.positions.copy(), dict(a.info), a.calc) for a in frames]
    energies, forces = fitted.predict(frames)
    assert energies.shape == (6,) and np.all(np.isfinite(energies))
    assert [f.shape for f in forces] == [(9, 3)] * 6 and all(np.all(np.isfinite(f)) for f in forces)
    for a, (pos, info, calc) in zip(frames, before):
        assert np.array_equal(a.positions, pos) and a.info == info and a.calc is calc
    # measured (SOAP only, 8 configurations, rnd_seed 1): training-set force MAE 0.32 eV/Å against
    # 1.09 for zero forces; energy errors at most 25 meV/atom on these six configurations
    zero_baseline = float(np.mean(np.abs(np.concatenate([a.get_forces() for a in train[:3]]))))
    assert _mae(forces[:3], train[:3]) < 0.4 * zero_baseline
    assert np.all(np.abs(energies - [a.get_potential_energy() for a in frames]) / 9 < 0.04)  # eV/atom


def test_load_gives_same_predictions(fitted, test_frames):
    e1, f1 = fitted.predict(test_frames)
    loaded = GAPModel.load(fitted.potential_file_)
    assert loaded.species_ == fitted.species_ and loaded.n_train_ == 8
    assert loaded.e0s_ == pytest.approx(fitted.e0s_)
    e2, f2 = loaded.predict(test_frames, progress=True)
    np.testing.assert_allclose(e2, e1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.concatenate(f2), np.concatenate(f1), rtol=0, atol=1e-8)
    clone = pickle.loads(pickle.dumps(fitted))  # the quippy object is not pickled
    np.testing.assert_allclose(clone.predict(test_frames[:1])[0], e1[:1], atol=1e-8)


def test_refit_is_reproducible_and_replaces_files(fitted, train, test_frames, e0s, tmp_path):
    model = GAPModel(GAPSettings(**SMALL))
    model.fit(train[:4], e0s=e0s, workdir=tmp_path)
    model.fit(train, e0s=e0s, workdir=tmp_path)  # same workdir: the old potential goes
    assert len(list(tmp_path.glob("gap.xml.sparseX.*"))) == 3 and model.n_train_ == 8
    np.testing.assert_allclose(model.predict(test_frames)[0], fitted.predict(test_frames)[0], atol=1e-8)


def test_fit_two_body_and_diagonal_radial(fitted, train, test20, e0s, tmp_path):
    settings = GAPSettings(n_max=4, l_max=3, n_sparse=50, two_body_n_sparse=10)
    model = GAPModel(settings).fit(train, e0s=e0s, workdir=tmp_path)
    # 3 SOAP + 5 pair terms (H-H, H-C, H-O, C-C, C-O: one O per molecule, so no O-O, which
    # would make gap_fit exit 1 without a message)
    assert len(list(tmp_path.glob("gap.xml.sparseX.*"))) == 8
    assert model.species_ == ("H", "C", "O")
    energies, forces = model.predict(test20)
    # Measured (8 configurations, rnd_seed 1): force MAE 0.38 eV/Å on these 20 test
    # configurations (zero forces: 0.88), 0.094 on the training set, energy error 12 meV/atom on
    # average; SOAP alone (the fitted fixture) 0.53 eV/Å. Bounds with ~20-60 % margin.
    assert np.all(np.isfinite(energies)) and _mae(forces, test20) < 0.45  # eV/Å
    assert _mae(model.predict(train)[1], train) < 0.15
    assert _mae(forces, test20) < 0.85 * _mae(fitted.predict(test20)[1], test20)  # the 2-body term helps
    assert np.mean(np.abs(energies - [a.get_potential_energy() for a in test20]) / 9) < 0.02  # eV/atom


def test_fit_without_cell_keeps_energies(fitted, train, test_frames, e0s, tmp_path):
    # gap_fit drops the energy of a configuration written without a Lattice; fit() adds a box
    bare = []
    for a in train:
        b = Atoms(a.numbers, a.positions)
        b.info["REF_energy"], b.arrays["REF_forces"] = a.get_potential_energy(), a.get_forces()
        bare.append(b)
    assert bare[0].cell.rank == 0
    model = GAPModel(GAPSettings(**SMALL)).fit(bare, e0s=e0s, workdir=tmp_path)
    assert "Number of target energies (property name: REF_energy) found: 8" in (tmp_path / "gap_fit.log").read_text()
    assert bare[0].cell.rank == 0  # the caller's atoms keep their (absent) cell
    e1, f1 = model.predict(test_frames)
    e2, f2 = fitted.predict(test_frames)  # same data with the files' 50 Å cell
    np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(f1), np.concatenate(f2), rtol=0, atol=1e-6)


def test_unseen_element(fitted, e0s):
    nh3 = Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    with pytest.raises(UnknownElementError, match="N"):
        fitted.predict([nh3])


def test_not_fitted():
    with pytest.raises(NotFittedError):
        GAPModel().predict([Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]])])
    with pytest.raises(InputError, match="not found"):
        GAPModel.load("/nonexistent/gap.xml")


def test_missing_e0(train, e0s, tmp_path):
    with pytest.raises(SetupError, match="O"):
        GAPModel(GAPSettings(**SMALL)).fit(train[:2], e0s={"H": e0s["H"], "C": e0s["C"]}, workdir=tmp_path)


def test_unlabelled_frame(train, e0s, tmp_path):
    bare = Atoms(train[1].numbers, train[1].positions)
    with pytest.raises(InputError, match="configuration 1"):
        GAPModel(GAPSettings(**SMALL)).fit([train[0], bare], e0s=e0s, workdir=tmp_path)


def test_gap_fit_failure(train, e0s, tmp_path):
    model = GAPModel(GAPSettings(**SMALL, sparse_method="no_such_method"))
    with pytest.raises(ModelFitError, match="gap_fit") as info:
        model.fit(train[:2], e0s=e0s, workdir=tmp_path)
    assert "gap_fit.log" in str(info.value)
    assert "unknown sparse method no_such_method" in str(info.value)  # gap_fit's reason quoted
    assert not (tmp_path / "gap.xml").exists()
    with pytest.raises(NotFittedError):
        model.predict(train[:1])
    refit = GAPModel(GAPSettings(**SMALL)).fit(train[:2], e0s=e0s, workdir=tmp_path)
    refit.settings = model.settings  # a failed refit leaves the model unfitted
    with pytest.raises(ModelFitError):
        refit.fit(train[:2], e0s=e0s, workdir=tmp_path)
    with pytest.raises(NotFittedError):
        refit.predict(train[:1])


def test_timeout_kills_gap_fit_and_leaves_the_model_unfitted(fitted, train, e0s, tmp_path):
    model = make_model("gap", GAPSettings(**SMALL))
    model.fit(train, e0s=e0s, workdir=tmp_path)  # fitted: a failed refit must undo it
    model.settings = GAPSettings(**SMALL, timeout_s=0.05)  # gap_fit needs about a second here
    with pytest.raises(ModelFitError, match=r"gap_fit did not finish within timeout_s=0.05 s") as info:
        model.fit(train, e0s=e0s, workdir=tmp_path)
    assert "gap_fit.log" in str(info.value) and str(tmp_path) in str(info.value)
    assert not (tmp_path / "gap.xml").exists()  # the earlier potential is gone, none half-written
    for attr in ("potential_file_", "species_", "e0s_", "n_train_"):
        assert not hasattr(model, attr)
    with pytest.raises(NotFittedError):
        model.predict(train[:1])


def test_leftover_that_cannot_be_removed_is_named(train, e0s, tmp_path, pinned):
    model = GAPModel(GAPSettings(**SMALL)).fit(train[:2], e0s=e0s, workdir=tmp_path)
    stale = tmp_path / "gap.xml.sparseX.99"  # from an earlier fit with more descriptors
    stale.write_text("stale")
    pinned(stale)
    with pytest.raises(SetupError, match="cannot remove the files of an earlier fit") as info:
        model.fit(train[:2], e0s=e0s, workdir=tmp_path)
    assert str(stale) in str(info.value)
    with pytest.raises(NotFittedError):  # the failed refit does not keep the earlier potential
        model.predict(train[:1])


def test_protocol_and_calculator_match_predict(fitted, test_frames):
    assert isinstance(fitted, Model) and isinstance(fitted, ModelWithVariance)
    energies, forces = fitted.predict(test_frames)
    calc = fitted.as_calculator()
    assert calc is not fitted.as_calculator()  # a new calculator each call
    for atoms, e, f in zip(test_frames, energies, forces):
        mine = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        mine.calc = calc
        assert mine.get_potential_energy() == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(mine.get_forces(), f, rtol=0, atol=1e-8)
    with pytest.raises(NotFittedError):
        GAPModel().as_calculator()
    variance = fitted.predict_variance(test_frames)
    assert variance.shape == (3,) and np.all(variance > 0)


def test_feature_spec_is_the_gaps_own(train):
    from oed.design import design_features

    settings = GAPSettings(n_max=4, l_max=3, atom_sigma=0.45, zeta=2, n_sparse=7, cutoff=4.5)
    spec = GAPModel(settings).feature_spec(forces=True)
    assert (spec.kind, spec.backend, spec.forces) == ("gap-kernel", "quippy", True)
    assert (spec.r_cut, spec.n_max, spec.l_max, spec.sigma, spec.zeta) == (4.5, 4, 3, 0.45, 2)
    assert spec.diagonal_radial and spec.n_sparse == 7 and spec.sparse_method == "cur_points"
    assert (spec.sigma_energy, spec.sigma_force) == (settings.energy_sigma, settings.force_sigma)
    blocks, _, _ = design_features(train[:4], spec)
    # 7 sparse points per species, capped at that species' environments (4 O atoms): 7 + 7 + 4
    assert blocks.rows.shape == (4 * 28, 18)
    assert GAPModel(GAPSettings(sparse_method="RANDOM")).feature_spec(forces=False).sparse_method == "random"
    with pytest.raises(SetupError, match="sparse_method"):
        GAPModel(GAPSettings(sparse_method="kmeans")).feature_spec(forces=False)
    with pytest.raises(SetupError, match="cutoff_transition_width"):
        GAPModel(GAPSettings(cutoff_transition_width=0.5)).feature_spec(forces=False)


def test_find_gap_fit(monkeypatch, tmp_path):
    assert Path(find_gap_fit()).name == "gap_fit"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SetupError, match="quippy-ase"):
        find_gap_fit()


# -- metrics ----------------------------------------------------------------------------------
def test_error_metrics_by_hand():
    ref_e, pred_e, n = [-10.0, -20.0], [-9.9, -20.4], [2, 4]  # errors +0.1 eV / 2, -0.4 eV / 4
    ref_f = [np.zeros((2, 3)), np.zeros((4, 3))]
    pred_f = [np.full((2, 3), 0.01), np.full((4, 3), -0.02)]
    m = error_metrics(ref_e, pred_e, n, ref_f, pred_f)
    assert m["energy_mae"] == pytest.approx((50 + 100) / 2)  # meV/atom
    assert m["energy_rmse"] == pytest.approx(np.sqrt((50**2 + 100**2) / 2))
    assert m["force_mae"] == pytest.approx((6 * 10 + 12 * 20) / 18)  # meV/Å
    assert m["force_rmse"] == pytest.approx(np.sqrt((6 * 100 + 12 * 400) / 18))
    assert m["n_configs"] == 2 and m["n_force_components"] == 18

    only_e = error_metrics(ref_e, pred_e, n, None, None)
    assert set(only_e) == {"energy_mae", "energy_rmse", "n_configs"}
    with pytest.raises(InputError):
        error_metrics(None, None, None, None, None)
    with pytest.raises(InputError):
        error_metrics(ref_e, pred_e[:1], n, None, None)


class _Shifted:
    """A fake potential: reference labels plus a constant offset."""

    def predict(self, frames):
        return (np.array([a.get_potential_energy() + 0.9 for a in frames]),
                [np.zeros((len(a), 3)) if "forces" not in a.calc.results else a.get_forces() + 0.001
                 for a in frames])


def test_evaluate_skips_missing_labels(test_frames, fitted):
    assert not isinstance(_Shifted(), Model)  # evaluate needs only predict
    m = evaluate(_Shifted(), test_frames)
    assert m["energy_mae"] == pytest.approx(100.0) and m["force_mae"] == pytest.approx(1.0)
    energy_only = read(DATA / "test_norm_mode_874.xyz", ":2")
    m = evaluate(_Shifted(), energy_only)
    assert "force_mae" not in m and "n_force_components" not in m and m["n_configs"] == 2
    with pytest.raises(InputError):
        evaluate(_Shifted(), [Atoms(a.numbers, a.positions) for a in test_frames])
    real = evaluate(fitted, test_frames)
    assert np.isfinite(real["force_mae"]) and real["n_force_components"] == 81
