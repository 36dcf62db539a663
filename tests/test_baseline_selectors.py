"""Baseline selectors (FPS, CUR, k-means medoids) and GP information gain, against their references.

Real libraries throughout: scikit-matter's FPS and CUR, scikit-learn's KMeans,
BoTorch's acquisitions, and brute-force GP posteriors with torch.linalg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from oed.errors import InputError
from oed.information import DesignBlocks
from oed.selectors import available, make_selector, selector_class

DATA = Path(__file__).parent.parent / "data" / "ethanol"
NAMES = ["fps", "cur", "kmeans", "info-gain"]


@pytest.fixture
def pool():
    rng = np.random.default_rng(3)
    # low-rank + noise: structure for CUR and the GP, no exact ties for FPS
    return rng.normal(size=(40, 4)) @ rng.normal(size=(4, 16)) + 0.2 * rng.normal(size=(40, 16))


@pytest.fixture(scope="module")
def ethanol():
    """Summed SOAP features (n_max=4, l_max=3) and energies (eV) of 50 ethanol configurations."""
    from oed.descriptors import SOAPDescriptor
    from oed.io import read_structures

    frames = read_structures(DATA / "train.xyz")[:50]
    X = SOAPDescriptor(n_max=4, l_max=3).fit(frames).per_structure(frames)
    y = np.array([atoms.get_potential_energy() for atoms in frames])
    return X, y


def build(name, k, **params):
    return make_selector(name, k, seed=params.pop("seed", 0), **params)


# ----------------------------------------------------------------------------- contract
def test_registered():
    assert set(NAMES) <= set(available())
    assert selector_class("info-gain").__name__ == "GPInformationGain"
    sel = make_selector("info-gain", 3, acquisition="nipv")
    assert sel.acquisition == "nipv"


@pytest.mark.parametrize("name", NAMES + ["info-gain:nipv"])
def test_contract(name, pool):
    name, _, acq = name.partition(":")
    params = {"acquisition": acq} if acq else {}
    sel = build(name, 6, **params).fit(pool)
    idx = sel.selected_idx_
    assert sel.n_selected_ == 6 == len(idx) == len(sel.gains_) == len(set(idx.tolist()))
    assert idx.dtype.kind == "i" and idx.min() >= 0 and idx.max() < len(pool)
    # determinism for a seed, idempotent fit, DesignBlocks = their energy rows
    again = build(name, 6, **params).fit(pool)
    np.testing.assert_array_equal(idx, again.selected_idx_)
    np.testing.assert_array_equal(idx, sel.fit(pool).selected_idx_)
    blocks = DesignBlocks(np.repeat(pool, 2, axis=0), np.arange(0, 2 * len(pool) + 1, 2))
    np.testing.assert_array_equal(idx, build(name, 6, **params).fit(blocks).selected_idx_)
    # picks complement the training set: training on the picks moves every new pick elsewhere
    cont = build(name, 6, **params).fit(pool, X_train=pool[idx])
    assert not set(cont.selected_idx_.tolist()) & set(idx.tolist())


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, pool):
    bad = pool.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError):
        build(name, 3).fit(bad)
    with pytest.raises(InputError):
        build(name, 3).fit(pool[0])
    with pytest.raises(InputError):
        build(name, 3).fit(pool[:0])
    with pytest.raises(InputError):
        build(name, 0).fit(pool)
    with pytest.raises(InputError):
        build(name, 3).fit(pool, X_train=pool[:, :4])
    with pytest.warns(UserWarning, match="exceeds the pool size"):
        assert build(name, 5).fit(pool[:3]).n_selected_ == 3


# ----------------------------------------------------------------------------- FPS
@pytest.mark.parametrize("start", [0, 17])
def test_fps_equals_skmatter(start, pool, ethanol):
    from skmatter.sample_selection import FPS

    for X in (pool, ethanol[0]):
        ours = build("fps", 15, initialize=start).fit(X)
        ref = FPS(n_to_select=15, initialize=start).fit(X)
        np.testing.assert_array_equal(ours.selected_idx_, ref.selected_idx_)
        np.testing.assert_allclose(ours.gains_, np.sqrt(ref.get_select_distance()), rtol=1e-9)
        assert ours.gains_[0] == np.inf and np.all(np.diff(ours.gains_) <= 0)


def test_fps_gains_are_hausdorff_distances_and_train_acts_as_selected(pool):
    from scipy.spatial.distance import cdist
    from skmatter.sample_selection import FPS

    train = pool[:5] + 0.05
    sel = build("fps", 12).fit(pool, X_train=train)
    chosen = list(train)
    for j, gain in zip(sel.selected_idx_, sel.gains_):
        d = cdist(pool, np.array(chosen)).min(axis=1)
        d[sel.selected_idx_[: len(chosen) - len(train)]] = -np.inf
        assert j == np.argmax(d) and gain == pytest.approx(d[j], rel=1e-9)
        chosen.append(pool[j])
    assert np.all(np.diff(sel.gains_) <= 0) and np.isfinite(sel.gains_).all()
    # skmatter started from the training rows picks the same points
    ref = FPS(n_to_select=len(train) + 12, initialize=list(range(len(train)))).fit(np.vstack([train, pool]))
    np.testing.assert_array_equal(ref.selected_idx_[len(train):] - len(train), sel.selected_idx_)


def test_fps_random_start_uses_random_state(pool):
    starts = {int(build("fps", 1, initialize="random", seed=s).fit(pool).selected_idx_[0]) for s in range(6)}
    assert len(starts) > 1
    a = build("fps", 4, initialize="random", seed=5).fit(pool).selected_idx_
    np.testing.assert_array_equal(a, build("fps", 4, initialize="random", seed=5).fit(pool).selected_idx_)
    with pytest.raises(InputError, match="initialize"):
        build("fps", 3, initialize=len(pool)).fit(pool)


# ----------------------------------------------------------------------------- CUR
def test_cur_equals_skmatter_and_gains_are_leverage(pool, ethanol):
    from skmatter.sample_selection import CUR

    for X in (pool, ethanol[0]):
        ours = build("cur", 8).fit(X)
        np.testing.assert_array_equal(ours.selected_idx_, CUR(n_to_select=8).fit(X).selected_idx_)
        u = np.linalg.svd(X, full_matrices=False)[0][:, 0]
        assert ours.gains_[0] == pytest.approx(np.max(u**2), rel=1e-8)
        assert np.all((ours.gains_ > 0) & (ours.gains_ <= 1))


def test_cur_with_train_continues_the_selection(pool):
    # orthogonalising against the first picks leaves CUR exactly where it stood after them
    full = build("cur", 8).fit(pool).selected_idx_
    cont = build("cur", 5).fit(pool, X_train=pool[full[:3]])
    np.testing.assert_array_equal(cont.selected_idx_, full[3:])


# ----------------------------------------------------------------------------- k-means
def test_kmeans_medoids_are_members_nearest_each_centroid(ethanol):
    from sklearn.cluster import KMeans

    X = ethanol[0]
    sel = build("kmeans", 7, seed=4).fit(X)
    km = KMeans(n_clusters=7, n_init="auto", random_state=4).fit(X)
    assert sorted(sel.gains_.tolist(), reverse=True) == sel.gains_.tolist()
    assert sel.gains_.sum() == len(X)
    for j, size, centre in zip(sel.selected_idx_, sel.gains_, sel.cluster_centers_):
        c = int(np.argmin(((km.cluster_centers_ - centre) ** 2).sum(axis=1)))
        members = np.flatnonzero(km.labels_ == c)
        assert len(members) == size
        np.testing.assert_allclose(centre, km.cluster_centers_[c])
        assert j == members[np.argmin(((X[members] - centre) ** 2).sum(axis=1))]


def test_kmeans_with_train_skips_covered_regions():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.vstack([c + 0.3 * rng.normal(size=(15, 2)) for c in centres])
    blob = np.repeat(np.arange(3), 15)
    assert sorted(blob[build("kmeans", 3).fit(X).selected_idx_]) == [0, 1, 2]
    train = centres[0] + 0.3 * rng.normal(size=(4, 2))  # labelled structures in blob 0
    sel = build("kmeans", 2).fit(X, X_train=train)
    assert sorted(blob[sel.selected_idx_]) == [1, 2]


def test_kmeans_duplicates_fill_with_warning():
    X = np.repeat(np.eye(3), 4, axis=0)
    with pytest.warns(UserWarning, match="usable clusters"):
        sel = build("kmeans", 5).fit(X)
    assert len(set(sel.selected_idx_.tolist())) == 5 and sel.gains_[-1] == 0


# ----------------------------------------------------------------------------- GP information gain
def brute_posterior_variance(x, S, *, s=1.0, noise=1e-3, zeta=2):
    """Latent GP variance at rows x given rows S (labels irrelevant), by a dense solve."""
    u = lambda A: torch.as_tensor(A / np.linalg.norm(A, axis=1, keepdims=True), dtype=torch.float64)
    k = lambda A, B: s * (u(A) @ u(B).T) ** zeta
    prior = s * torch.ones(len(x), dtype=torch.float64)
    if len(S) == 0:
        return prior.numpy()
    kxs = k(x, S)
    sol = torch.linalg.solve(k(S, S) + noise * torch.eye(len(S), dtype=torch.float64), kxs.T)
    return (prior - (kxs * sol.T).sum(dim=1)).numpy()


@pytest.mark.parametrize("with_train", [False, True])
def test_info_gain_variance_matches_brute_force(with_train, pool):
    train = pool[:6] if with_train else pool[:0]
    X = pool[6:]
    sel = build("info-gain", 7, fit_hyperparameters=False, noise=1e-2).fit(
        X, X_train=train if with_train else None)
    assert sel.hyperparameters_["outputscale"] == pytest.approx(1.0)
    assert sel.hyperparameters_["noise"] == pytest.approx(1e-2)
    chosen = list(train)
    for t, (j, gain) in enumerate(zip(sel.selected_idx_, sel.gains_)):
        var = brute_posterior_variance(X, np.array(chosen).reshape(-1, X.shape[1]), noise=1e-2)
        var[sel.selected_idx_[:t]] = -np.inf
        assert var[j] == pytest.approx(var.max(), rel=1e-9)  # greedy: the largest variance
        assert gain == pytest.approx(0.5 * np.log1p(var[j] / 1e-2), rel=1e-8)
        chosen.append(X[j])
    if not with_train:  # k(x, x) = 1 for every row: the prior variance ties, lowest index first
        assert sel.selected_idx_[0] == 0
    assert np.all(np.diff(sel.gains_) <= 1e-12)


@pytest.mark.parametrize("acquisition", ["variance", "nipv"])
def test_info_gain_rank_one_equals_botorch_driver(acquisition, ethanol):
    X, y = ethanol
    train, pool, target = X[:8], X[8:30], X[30:]
    params = {"acquisition": acquisition, "zeta": 2}
    kw = dict(X_train=train, y_train=y[:8], **({"X_target": target} if acquisition == "nipv" else {}))
    fast = build("info-gain", 5, **params).fit(pool, **kw)
    ref = build("info-gain", 5, method="botorch", **params).fit(pool, **kw)
    np.testing.assert_array_equal(fast.selected_idx_, ref.selected_idx_)
    np.testing.assert_allclose(fast.gains_, ref.gains_, rtol=1e-5, atol=1e-12)
    assert fast.hyperparameters_["fitted"]


def test_info_gain_fits_hyperparameters_on_labels(ethanol):
    X, y = ethanol
    fixed = build("info-gain", 3).fit(X[20:], X_train=X[:20])
    fitted = build("info-gain", 3).fit(X[20:], X_train=X[:20], y_train=y[:20])
    held = build("info-gain", 3, fit_hyperparameters=False).fit(X[20:], X_train=X[:20], y_train=y[:20])
    assert fixed.hyperparameters_ == held.hyperparameters_ | {"y_mean": None, "y_std": None}
    assert fitted.hyperparameters_["fitted"] and not held.hyperparameters_["fitted"]
    hp, hp0 = fitted.hyperparameters_, fixed.hyperparameters_
    assert hp["outputscale"] != pytest.approx(hp0["outputscale"], rel=1e-3)
    assert hp["noise"] != pytest.approx(hp0["noise"], rel=1e-3)
    assert hp["y_std"] == pytest.approx(np.std(y[:20]))


def test_info_gain_nipv_prefers_points_near_the_target():
    rng = np.random.default_rng(0)
    d = 8
    near = np.eye(d)[0] + 0.3 * rng.normal(size=(20, d))
    far = np.eye(d)[1] * 5 + 0.3 * rng.normal(size=(20, d))
    X = np.vstack([far, near])  # far rows first: index order cannot explain the result
    target = np.eye(d)[0] + 0.3 * rng.normal(size=(30, d))
    nipv = build("info-gain", 5, acquisition="nipv").fit(X, X_target=target)
    assert np.all(nipv.selected_idx_ >= 20)
    assert np.all(nipv.gains_ > 0)
    var = build("info-gain", 5).fit(X)  # the variance criterion ignores the target: both groups
    assert np.any(var.selected_idx_ < 20)


def test_info_gain_duplicates_and_errors(pool):
    X = np.vstack([pool[:5], pool[:5]])
    sel = build("info-gain", 8, method="botorch").fit(X)
    assert len(set(sel.selected_idx_.tolist())) == 8
    with pytest.raises(InputError, match="acquisition"):
        build("info-gain", 3, acquisition="ucb").fit(pool)
    with pytest.raises(InputError, match="without X_train"):
        build("info-gain", 3).fit(pool, y_train=np.zeros(3))
    with pytest.raises(InputError, match="y_train must have shape"):
        build("info-gain", 3).fit(pool, X_train=pool[:4], y_train=np.zeros(3))
    with pytest.raises(InputError, match="nipv"):
        build("info-gain", 3).fit(pool, X_target=pool)
    with pytest.raises(InputError, match="zeta"):
        build("info-gain", 3, zeta=0).fit(pool)
