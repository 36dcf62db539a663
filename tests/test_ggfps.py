"""Gradient-guided farthest-point sampling (oed.selectors.ggfps): reduction to FPS, force weighting, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from oed.design import fit_selector
from oed.errors import InputError
from oed.selectors import make_selector
from oed.selectors.fps import FarthestPointSampling
from oed.selectors.ggfps import GGFPS


def pool(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    g = rng.gamma(2.0, 1.0, size=n)  # eV/Å
    return X, g


def brute_force(X, g, betas, first):
    """Reference GGFPS by explicit distances: argmax of g^β · min distance to the picks."""
    picks = [first]
    for beta in betas[1:]:
        dist = np.linalg.norm(X[:, None] - X[picks][None], axis=2).min(axis=1)
        score = g**beta * dist
        score[picks] = -np.inf
        picks.append(int(np.argmax(score)))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beta_zero_is_fps_after_the_same_first_pick(seed):
    X, g = pool(seed=seed)
    sel = GGFPS(15, beta=0.0, random_state=seed, device="cpu").fit(X, force_norms=g)
    fps = FarthestPointSampling(15, initialize=int(sel.selected_idx_[0]), device="cpu").fit(X)
    np.testing.assert_array_equal(sel.selected_idx_, fps.selected_idx_)
    np.testing.assert_allclose(sel.gains_[1:], fps.gains_[1:], rtol=1e-12)  # g^0 · d = d
    # and with a training set (no draw): the same picks as FPS from that set
    sel = GGFPS(10, beta=0.0, device="cpu").fit(X[10:], X_train=X[:10], force_norms=g[10:])
    fps = FarthestPointSampling(10, device="cpu").fit(X[10:], X_train=X[:10])
    np.testing.assert_array_equal(sel.selected_idx_, fps.selected_idx_)


def test_picks_match_a_brute_force_reference_with_a_beta_schedule():
    X, g = pool(n=40, seed=3)
    sel = GGFPS(12, beta=2.0, beta_end=0.5, random_state=4, device="cpu").fit(X, force_norms=g)
    np.testing.assert_allclose(sel.betas_, np.linspace(2.0, 0.5, 12))
    assert sel.selected_idx_.tolist() == brute_force(X, g, sel.betas_, int(sel.selected_idx_[0]))
    assert sel.gains_[0] == np.inf and np.all(np.isfinite(sel.gains_[1:])) and np.all(sel.gains_[1:] > 0)


def test_large_beta_prefers_high_force_points():
    X, g = pool(n=200, seed=5)
    high = g > np.quantile(g, 0.75)
    k = 20
    fps = GGFPS(k, beta=0.0, random_state=0, device="cpu").fit(X, force_norms=g).selected_idx_
    heavy = GGFPS(k, beta=8.0, random_state=0, device="cpu").fit(X, force_norms=g).selected_idx_
    assert high[heavy[1:]].mean() > 0.9  # picks after the drawn start
    assert high[heavy].mean() > high[fps].mean() + 0.3
    assert np.median(g[heavy]) > np.median(g[fps])


def test_first_pick_is_drawn_in_proportion_to_the_force_norm():
    X = np.random.default_rng(0).normal(size=(4, 3))
    g = np.array([0.0, 1.0, 3.0, 0.0])
    firsts = [GGFPS(1, random_state=s, device="cpu").fit(X, force_norms=g).selected_idx_[0] for s in range(400)]
    counts = np.bincount(firsts, minlength=4)
    assert counts[0] == counts[3] == 0  # zero norm: never drawn
    assert 0.65 < counts[2] / 400 < 0.85  # expected 0.75


def test_zero_force_norms_are_picked_last_and_all_zero_draws_uniformly():
    X, g = pool(n=30, seed=6)
    g[[3, 7, 11]] = 0.0
    sel = GGFPS(30, beta=1.0, random_state=0, device="cpu").fit(X, force_norms=g)
    assert sorted(sel.selected_idx_[-3:].tolist()) == [3, 7, 11]
    assert np.all(sel.gains_[-3:] == 0)
    zero = GGFPS(5, beta=1.0, random_state=0, device="cpu").fit(X, force_norms=np.zeros(30))
    assert zero.n_selected_ == 5 and zero.gains_[0] == np.inf and not np.isnan(zero.gains_).any()


@pytest.mark.parametrize("bad, match", [
    (None, "required"),
    (np.ones(29), "shape"),
    (np.ones((30, 1)), "shape"),
    (np.r_[np.ones(29), np.nan], "NaN"),
    (np.r_[np.ones(29), np.inf], "NaN or infinite"),
    (np.r_[np.ones(29), -0.1], ">= 0"),
    (["a"] * 30, "numbers"),
])
def test_force_norms_are_validated(bad, match):
    X, _ = pool(n=30)
    with pytest.raises(InputError, match=match):
        GGFPS(3, device="cpu").fit(X, force_norms=bad)


def test_bad_exponents_are_refused():
    X, g = pool(n=30)
    with pytest.raises(InputError, match="beta"):
        GGFPS(3, beta=np.nan, device="cpu").fit(X, force_norms=g)
    with pytest.raises(InputError, match="beta_end"):
        GGFPS(3, beta_end="high", device="cpu").fit(X, force_norms=g)
    g[0] = 0.0
    with pytest.raises(InputError, match="negative beta"):
        GGFPS(3, beta=1.0, beta_end=-1.0, device="cpu").fit(X, force_norms=g)


def test_clone_and_make_selector():
    sel = make_selector("ggfps", 4, seed=3, beta=2.0, beta_end=1.0)
    assert isinstance(sel, GGFPS) and sel.random_state == 3
    copy = clone(sel)
    assert copy.get_params() == sel.get_params() and copy is not sel
    X, g = pool(n=30)
    np.testing.assert_array_equal(copy.fit(X, force_norms=g).selected_idx_, sel.fit(X, force_norms=g).selected_idx_)


def test_fit_selector_passes_force_norms_and_refuses_them_elsewhere():
    X, g = pool(n=30)
    sel = fit_selector("ggfps", 4, X, force_norms=g, seed=1, device="cpu")
    assert sel.n_selected_ == 4
    with pytest.raises(InputError, match="required"):
        fit_selector("ggfps", 4, X, device="cpu")
    with pytest.raises(InputError, match="does not use force norms"):
        fit_selector("fps", 4, X, force_norms=g)
