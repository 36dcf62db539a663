"""Test-time training on a cheap prior (loops.ttt): a real two-head MACE fitted by run_train, real xTB."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from loops.errors import SetupError
from loops.mace import MACESettings
from loops.oracles import e0s_from_file
from loops.ttt import PRIOR_HEAD, TTTMACEModel, TTTSettings
from oed.io import REF_ENERGY

pytestmark = pytest.mark.integration

DATA = "data/ethanol/"
TINY = dict(num_channels=8, max_ell=1, correlation=2, num_interactions=1, radial_mlp=(8,), max_num_epochs=8,
            batch_size=4, valid_fraction=0.25)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    train = read(root / DATA / "train.xyz", ":16")
    e0s = e0s_from_file(root / DATA / "isolated_atoms.xyz", ["H", "C", "O"])
    model = TTTMACEModel(MACESettings(**TINY), TTTSettings(steps=3, batch_size=3))
    return model.fit(train, e0s=e0s, workdir=tmp_path_factory.mktemp("ttt")), read(root / DATA / "test_MD.xyz", ":6")


def test_two_heads_read_out_their_own_level_of_theory(fitted):
    from loops.ttt import _prior_labels

    model, test = fitted
    work = model.model_file_.parent
    assert (work / "prior_train.xyz").exists() and (work / "prior_valid.xyz").exists()
    dft = np.array([a.get_potential_energy() for a in test])
    xtb = np.array([a.info[REF_ENERGY] for a in _prior_labels(test, "gfn2-xtb")])
    e_dft, _ = model.predict(test)
    e_prior = model._predict_head(test, PRIOR_HEAD)
    # the two levels differ by thousands of eV (E0s): each head sits near its own
    assert np.all(np.abs(e_dft - dft) < np.abs(e_dft - xtb))
    assert np.all(np.abs(e_prior - xtb) < np.abs(e_prior - dft))


def test_predict_ttt_changes_predictions_and_restores_the_trained_weights(fitted):
    model, test = fitted
    e, f = model.predict(test)
    e_ttt, f_ttt = model.predict_ttt(test)
    assert e_ttt.shape == e.shape and [x.shape for x in f_ttt] == [x.shape for x in f]
    assert np.max(np.abs(e_ttt - e)) > 1e-8  # the representation moved
    e_again, f_again = model.predict(test)
    np.testing.assert_allclose(e_again, e, rtol=0, atol=1e-12)  # and was put back
    assert model.ttt_seconds_ > 0


def test_zero_steps_is_plain_prediction_and_bad_settings_are_refused(fitted):
    model, test = fitted
    plain = TTTMACEModel(model.settings, TTTSettings(steps=0))
    plain.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_") and not k.startswith("_")})
    np.testing.assert_allclose(plain.predict_ttt(test[:2])[0], model.predict(test[:2])[0], rtol=0, atol=1e-12)
    with pytest.raises(SetupError, match="update"):
        TTTSettings(update="readouts").validate()
    with pytest.raises(SetupError, match="lr"):
        TTTMACEModel(ttt=TTTSettings(lr=-1.0))


def test_a_configuration_the_prior_cannot_label_is_predicted_without_adaptation(fitted):
    model, test = fitted
    broken = test[0].copy()
    broken.positions[1] = broken.positions[0] + [0.05, 0.0, 0.0]  # two atoms on top of each other
    e, _ = model.predict_ttt([test[1], broken])
    assert model.ttt_skipped_ == (1,)
    np.testing.assert_allclose(e[1], model.predict([broken])[0][0], rtol=0, atol=1e-9)
