"""Lazy greedy (Minoux 1978) gives plain greedy's picks, gains and final state, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from oed.errors import InputError
from oed.selectors import make_selector


def clustered(n=600, d=40, seed=0):
    """A SOAP-like pool: a few clusters in a low-rank space plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 5)) * 3.0
    latent = centres[rng.integers(0, 6, size=n)] + rng.normal(size=(n, 5))
    return latent @ rng.normal(size=(5, d)) + 0.1 * rng.normal(size=(n, d))


@pytest.mark.parametrize("train", [False, True])
def test_lazy_fps_equals_plain_fps(train):
    X = clustered()
    X_train = clustered(30, seed=1) if train else None
    lazy = make_selector("fps", 80, device="cpu", lazy=True).fit(X, X_train=X_train)
    plain = make_selector("fps", 80, device="cpu", lazy=False).fit(X, X_train=X_train)
    assert lazy.selected_idx_.tolist() == plain.selected_idx_.tolist()
    assert lazy.gains_ == pytest.approx(plain.gains_, rel=1e-9)
    assert lazy.hausdorff_ == pytest.approx(plain.hausdorff_, rel=1e-6, abs=1e-5)  # plain leaves picks at ~1e-6
    assert lazy.n_rescored_ < 80 * len(X) / 4  # it skipped most of plain FPS's n updates per pick


def test_lazy_fps_breaks_ties_as_plain_fps_does():
    # points of an integer lattice: many exactly equal distances, so tie-breaking decides the picks
    grid = np.array([[i, j, k] for i in range(6) for j in range(6) for k in range(3)], dtype=float)
    X = np.vstack([grid, grid[::7]])  # duplicates too
    for init in (0, 17):
        lazy = make_selector("fps", 40, device="cpu", lazy=True, initialize=init).fit(X)
        plain = make_selector("fps", 40, device="cpu", lazy=False, initialize=init).fit(X)
        assert lazy.selected_idx_.tolist() == plain.selected_idx_.tolist()
        assert lazy.hausdorff_ == pytest.approx(plain.hausdorff_, abs=1e-9)


@pytest.mark.parametrize("train", [False, True])
def test_lazy_d_optimal_equals_plain_greedy(train):
    X = clustered()
    X_train = clustered(10, seed=2) if train else None
    kw = {"exchange": False, "reg": 0.3, "device": "cpu"}
    lazy = make_selector("d-optimal", 15, lazy=True, **kw).fit(X, X_train=X_train)
    plain = make_selector("d-optimal", 15, lazy=False, **kw).fit(X, X_train=X_train)
    assert lazy.selected_idx_.tolist() == plain.selected_idx_.tolist()
    assert lazy.gains_ == pytest.approx(plain.gains_, rel=1e-8)
    assert lazy.log_det_ == pytest.approx(plain.log_det_, rel=1e-10)
    assert not hasattr(plain, "n_rescored_") and lazy.n_rescored_ > 0


def test_lazy_d_optimal_is_not_used_where_it_does_not_apply():
    X = clustered(200, d=8)
    # more picks than features: the Woodbury space would be wider than the features, so plain greedy
    sel = make_selector("d-optimal", 20, device="cpu", lazy=True, exchange=False).fit(X)
    assert not hasattr(sel, "n_rescored_")
    with_exchange = make_selector("d-optimal", 5, device="cpu", lazy=True).fit(X)
    assert not hasattr(with_exchange, "n_rescored_")


def test_lazy_setting_is_checked():
    with pytest.raises(InputError, match="lazy must be"):
        make_selector("fps", 3, device="cpu", lazy="sometimes").fit(clustered(20))


@pytest.mark.parametrize("train", [False, True])
def test_lazy_ggfps_with_a_constant_exponent_equals_plain_ggfps(train):
    X = clustered()
    g = np.random.default_rng(4).gamma(2.0, 1.0, size=len(X))  # eV/Å
    X_train = clustered(20, seed=3) if train else None
    kw = {"beta": 1.5, "seed": 0, "device": "cpu"}  # make_selector passes seed as random_state
    lazy = make_selector("ggfps", 60, lazy=True, **kw).fit(X, X_train=X_train, force_norms=g)
    plain = make_selector("ggfps", 60, lazy=False, **kw).fit(X, X_train=X_train, force_norms=g)
    assert lazy.selected_idx_.tolist() == plain.selected_idx_.tolist()
    assert lazy.gains_ == pytest.approx(plain.gains_, rel=1e-9)
    assert lazy.hausdorff_ == pytest.approx(plain.hausdorff_, rel=1e-6, abs=1e-5)
    scheduled = make_selector("ggfps", 10, lazy=True, beta_end=0.0, **kw).fit(X, force_norms=g)
    assert not hasattr(scheduled, "n_rescored_")  # a β schedule makes scores rise: plain passes


def test_random_gains_from_the_picked_rows_equal_the_pool_pass():
    """random reports each pick's information gain; the Woodbury shortcut must give plain greedy's numbers."""
    from oed.selectors._greedy import run_greedy
    from oed.selectors.d_optimal import log_det_gain

    X = clustered()
    X_train = clustered(5, seed=6)
    sel = make_selector("random", 20, seed=3, reg=0.4).fit(X, X_train=X_train)
    _, gains, _, _ = run_greedy(X, X_train, 20, reg=0.4, score=log_det_gain, order=sel.selected_idx_, device="cpu")
    assert sel.gains_ == pytest.approx(gains, rel=1e-8)
