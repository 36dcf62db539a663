"""MACE back-end: real mace-torch training of a tiny model (about 10 s of epochs), no mocks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

pytest.importorskip("mace", reason="mace-torch is not installed")

from loops.errors import ModelFitError, SetupError  # noqa: E402
from loops.mace import RUN_TRAIN, MACEModel, MACESettings  # noqa: E402
from loops.models import Model, ModelWithVariance, make_model  # noqa: E402
from oed.errors import InputError, NotFittedError, UnknownElementError  # noqa: E402

DATA = Path(__file__).parent.parent / "data" / "ethanol"
#: A model small enough to train 30 epochs on 8 ethanol configurations in about 10 s (4 epochs
#: took 8 s, mostly start-up, and learned nothing: forces no better than zero, energies 0.4
#: eV/atom off). A force weight of 10 instead of 100 lets it learn the energies too.
TINY = dict(
    num_channels=8,
    max_ell=1,
    correlation=2,
    radial_mlp=(16, 16),
    max_num_epochs=30,
    batch_size=3,
    valid_fraction=0.25,
    forces_weight=10.0,
    seed=1,
)


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
def fitted(train, e0s, tmp_path_factory) -> MACEModel:
    return MACEModel(MACESettings(**TINY)).fit(train, e0s=e0s, workdir=tmp_path_factory.mktemp("mace"))


# -- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("r_max", -1.0),
        ("num_channels", 0),
        ("correlation", 2.5),
        ("max_L", 4),  # above max_ell
        ("radial_mlp", ()),
        ("valid_fraction", 1.0),
        ("ema_decay", 1.5),
        ("device", "tpu"),
        ("default_dtype", "float16"),
        ("num_threads", 0),
        ("seed", -1),
        ("batch_size", True),
        ("timeout_s", -1.0),
    ],
)
def test_bad_settings_raise_setup_error_naming_the_field(field, value):
    with pytest.raises(SetupError, match=field):
        MACESettings(**{field: value})


def test_settings_defaults_and_command():
    s = MACESettings()
    assert s.seed == 0 and s.device == "auto" and s.default_dtype == "float64"
    assert MACESettings(radial_mlp=[8, 8]).radial_mlp == (8, 8)
    argv = s.command("train.xyz", "valid.xyz", {"O": -2035.5, "H": -13.5}, device="cpu", batch_size=4)
    assert argv[1:3] == ["-m", "mace.cli.run_train"]
    assert "--E0s={1: -13.5, 8: -2035.5}" in argv
    assert "--energy_key=REF_energy" in argv and "--forces_key=REF_forces" in argv
    assert "--batch_size=4" in argv and "--seed=0" in argv and "--default_dtype=float64" in argv
    assert not any("wandb" in a for a in argv)


def test_make_model_builds_mace_with_seed():
    model = make_model("mace", seed=3)
    assert isinstance(model, MACEModel) and isinstance(model, Model)
    assert not isinstance(model, ModelWithVariance)  # no predictive uncertainty
    assert model.feature_spec(forces=True) is None  # selection space: descriptors() of a fit
    assert model.settings.seed == 3
    assert make_model("mace", seed=3, max_num_epochs=7).settings.max_num_epochs == 7


# -- errors ------------------------------------------------------------------------------------
def test_predict_before_fit_raises(test_frames):
    model = MACEModel()
    with pytest.raises(NotFittedError):
        model.predict(test_frames)
    with pytest.raises(NotFittedError):
        model.descriptors(test_frames)


def test_frame_without_labels_raises_input_error(train, e0s, tmp_path):
    bare = Atoms(numbers=train[0].numbers, positions=train[0].positions)
    with pytest.raises(InputError, match="configuration 1 has no reference energy and forces"):
        MACEModel(MACESettings(**TINY)).fit([train[0], bare], e0s=e0s, workdir=tmp_path)
    with pytest.raises(InputError, match="no training configurations"):
        MACEModel().fit([], e0s=e0s, workdir=tmp_path)


def test_missing_e0_raises_setup_error(train, e0s, tmp_path):
    with pytest.raises(SetupError, match="O"):
        MACEModel(MACESettings(**TINY)).fit(train, e0s={"H": e0s["H"], "C": e0s["C"]}, workdir=tmp_path)


def test_unknown_element_raises(fitted, test_frames):
    bad = test_frames[0].copy()
    bad.numbers[0] = 7  # nitrogen: not in ethanol
    with pytest.raises(UnknownElementError, match="N"):
        fitted.predict([test_frames[1], bad])
    with pytest.raises(UnknownElementError):
        fitted.descriptors([bad])


def test_log_report_quotes_reason_and_path(tmp_path):
    log = tmp_path / "mace_train.log"
    log.write_text(
        "INFO: Building model\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
        "AssertionError: No CUDA device available!\n"
    )
    text = RUN_TRAIN.report(log)
    assert "run_train says: AssertionError: No CUDA device available!" in text
    assert str(log) in text


# -- a fitted model ----------------------------------------------------------------------------
def test_fit_attributes_and_files(fitted, train, e0s):
    assert fitted.model_file_.is_file() and fitted.log_file_.is_file()
    assert fitted.species_ == ("H", "C", "O")
    assert fitted.e0s_ == {s: e0s[s] for s in ("H", "C", "O")}
    assert fitted.n_train_ == len(train)
    assert len(fitted.valid_indices_) == 2  # 25 % of 8
    workdir = fitted.model_file_.parent
    assert len(read(workdir / "train.xyz", ":")) == 6 and len(read(workdir / "valid.xyz", ":")) == 2


def test_predict_shapes_units_and_environment(fitted, test_frames):
    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    energies, forces = fitted.predict(test_frames)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == before  # import mace undone
    assert energies.shape == (3,) and energies.dtype == np.float64
    assert [f.shape for f in forces] == [(9, 3)] * 3
    ref = np.array([a.get_potential_energy() for a in test_frames])
    # total energies in eV (E0s included: ethanol is about -4209 eV, E0s alone are 4.7 eV/atom
    # off). Measured with TINY: at most 54 meV/atom off, force MAE 0.46 eV/Å (zero forces 0.86).
    assert np.all(np.abs(energies - ref) / 9 < 0.08)
    assert all(np.all(np.isfinite(f)) for f in forces)
    ref_f = np.concatenate([a.get_forces() for a in test_frames])
    assert np.mean(np.abs(np.concatenate(forces) - ref_f)) < 0.6
    e1, f1 = fitted.predict(test_frames[1:2])  # batching does not change a configuration's result
    np.testing.assert_allclose(e1[0], energies[1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(f1[0], forces[1], rtol=0, atol=1e-9)


def test_predict_with_a_smaller_graph_radius(fitted, test_frames):
    # radius refinement: the model's own r_max reproduces predict(); a shorter radius drops edges
    r_max = float(fitted._torch_model()[0].r_max)
    e, f = fitted.predict(test_frames)
    e_same, _ = fitted.predict(test_frames, cutoffs=[r_max] * 3)
    np.testing.assert_allclose(e_same, e, rtol=0, atol=1e-9)
    e_short, f_short = fitted.predict(test_frames, cutoffs=[r_max, 2.0, r_max])
    assert abs(e_short[1] - e[1]) > 1e-6 and np.all(np.isfinite(f_short[1]))
    np.testing.assert_allclose(e_short[[0, 2]], e[[0, 2]], rtol=0, atol=1e-9)
    with pytest.raises(InputError, match="cutoffs"):
        fitted.predict(test_frames, cutoffs=[r_max + 1.0] * 3)


def test_calculator_matches_predict(fitted, test_frames):
    energies, forces = fitted.predict(test_frames)
    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    calc = fitted.as_calculator()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == before
    for atoms, e, f in zip(test_frames, energies, forces):
        mine = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        mine.calc = calc
        assert mine.get_potential_energy() == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(mine.get_forces(), f, rtol=0, atol=1e-8)


def test_timeout_kills_training_and_leaves_the_model_unfitted(fitted, train, e0s, tmp_path):
    model = MACEModel(MACESettings(**{**TINY, "timeout_s": 1.0}))  # run_train's imports alone take longer
    with pytest.raises(ModelFitError, match=r"mace run_train did not finish within timeout_s=1 s") as info:
        model.fit(train, e0s=e0s, workdir=tmp_path)
    assert "mace_train.log" in str(info.value)
    assert not (tmp_path / "mace.model").exists() and not hasattr(model, "model_file_")
    with pytest.raises(NotFittedError):
        model.predict(train[:1])


def test_forces_are_minus_energy_gradient(fitted, test_frames):
    atoms = test_frames[0]
    _, forces = fitted.predict([atoms])
    h = 1e-4  # Å
    for i, k in [(0, 0), (2, 1), (8, 2), (5, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        e, _ = fitted.predict([plus, minus])
        numeric = -(e[0] - e[1]) / (2 * h)
        assert numeric == pytest.approx(forces[0][i, k], abs=1e-5)


def test_caller_atoms_untouched(fitted, test_frames):
    atoms = test_frames[2]
    positions = atoms.positions.copy()
    info = dict(atoms.info)
    arrays = set(atoms.arrays)
    calc = atoms.calc
    energy = atoms.get_potential_energy()
    fitted.predict([atoms])
    fitted.descriptors([atoms])
    assert np.array_equal(atoms.positions, positions)
    assert atoms.info == info and set(atoms.arrays) == arrays
    assert atoms.calc is calc and atoms.get_potential_energy() == energy


@pytest.mark.integration  # a second MACE training
def test_same_seed_same_predictions(fitted, train, e0s, test_frames, tmp_path):
    again = MACEModel(MACESettings(**TINY)).fit(train, e0s=e0s, workdir=tmp_path)
    assert again.valid_indices_ == fitted.valid_indices_
    e0, f0 = fitted.predict(test_frames)
    e1, f1 = again.predict(test_frames)
    np.testing.assert_allclose(e1, e0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.concatenate(f1), np.concatenate(f0), rtol=0, atol=1e-8)


def test_pickle_round_trip(fitted, test_frames):
    energies, forces = fitted.predict(test_frames)  # loads the torch module
    blob = pickle.dumps(fitted)
    assert b"torch.nn" not in blob and len(blob) < 20_000  # the module stays behind
    clone = pickle.loads(blob)
    e, f = clone.predict(test_frames)
    np.testing.assert_array_equal(e, energies)
    np.testing.assert_array_equal(np.concatenate(f), np.concatenate(forces))
    assert pickle.loads(pickle.dumps(MACEModel(MACESettings(seed=5)))).settings.seed == 5


def test_load_dir_reads_a_finished_fit_back_with_the_same_settings_only(fitted, test_frames, tmp_path):
    from loops.models import load_fitted

    workdir = fitted.model_file_.parent
    loaded = MACEModel.load_dir(workdir, MACESettings(**TINY))
    for name in ("model_file_", "species_", "e0s_", "n_train_", "valid_indices_", "log_file_"):
        assert getattr(loaded, name) == getattr(fitted, name), name
    e0, f0 = fitted.predict(test_frames)
    e1, f1 = loaded.predict(test_frames)
    np.testing.assert_array_equal(e1, e0)
    np.testing.assert_array_equal(np.concatenate(f1), np.concatenate(f0))
    # a resumed campaign refits instead of taking a model trained otherwise
    with pytest.raises(InputError, match="max_num_epochs"):
        MACEModel.load_dir(workdir, MACESettings(**{**TINY, "max_num_epochs": 31}))
    assert load_fitted("mace", MACESettings(**{**TINY, "max_num_epochs": 31}), workdir) is None
    assert load_fitted("mace", MACESettings(**TINY), workdir).n_train_ == fitted.n_train_
    with pytest.raises(InputError, match="no finished MACE fit"):
        MACEModel.load_dir(tmp_path, MACESettings(**TINY))  # e.g. a fit killed before its record
    # a later fit in the same directory that fails takes the earlier record with it
    import shutil

    again = tmp_path / "again"
    shutil.copytree(workdir, again)
    with pytest.raises(ModelFitError):
        MACEModel(MACESettings(**{**TINY, "timeout_s": 0.5})).fit(read(DATA / "train.xyz", ":8"), e0s=fitted.e0s_,
                                                                   workdir=again)
    with pytest.raises(InputError, match="no finished MACE fit"):
        MACEModel.load_dir(again, MACESettings(**{**TINY, "timeout_s": 0.5}))


def test_descriptors(fitted, test_frames):
    d = fitted.descriptors(test_frames)
    assert d.shape == (3, 2 * TINY["num_channels"])  # invariant channels of 2 layers
    assert np.all(np.isfinite(d))
    assert not np.allclose(d[0], d[1])
    np.testing.assert_allclose(fitted.descriptors(test_frames[1:2])[0], d[1], rtol=1e-10, atol=1e-12)


def test_isolated_atom_frames_are_training_data_not_e0s(train, e0s, tmp_path):
    # run_train would take this frame's energy as the E0 of H, replacing --E0s, and then fail
    # for lack of E0s for C and O; fit() trains on it as an ordinary configuration instead.
    h = Atoms("H", positions=[[0.0, 0.0, 0.0]])
    h.info.update(REF_energy=e0s["H"], config_type="IsolatedAtom")
    h.arrays["REF_forces"] = np.zeros((1, 3))
    settings = MACESettings(**{**TINY, "max_num_epochs": 1, "valid_fraction": 0.0})
    model = MACEModel(settings).fit([*train[:3], h], e0s=e0s, workdir=tmp_path)
    assert model.e0s_ == {s: e0s[s] for s in ("H", "C", "O")}
    log = model.log_file_.read_text()
    assert "using command line argument" in log and "from training file" not in log
    energies, _ = model.predict([h])
    assert np.isfinite(energies[0])


@pytest.mark.integration  # four MACE trainings, about 25 s
def test_committee_of_mace_models_reads_its_members_back(train, e0s, test_frames, tmp_path):
    from loops.committee import Committee
    from loops.parallel import Executor

    first = Committee("mace", MACESettings(**TINY), size=2, seed=0, subsample=0.75,
                      executor=Executor(workers=1, progress=False)).fit(train, e0s=e0s, workdir=tmp_path)
    assert first.loaded_ == [False, False]
    again = Committee("mace", MACESettings(**TINY), size=2, seed=0, subsample=0.75,
                      executor=Executor(workers=1, progress=False)).fit(train, e0s=e0s, workdir=tmp_path)
    assert again.loaded_ == [True, True]  # a resumed run does not train them again
    np.testing.assert_array_equal(again.predict(test_frames)[0], first.predict(test_frames)[0])
