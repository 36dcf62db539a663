"""Posterior-transformed batch selectors (LCMD, k-means++) and the GAP's own K_MM/δ² prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from oed.design import FeatureSpec, design_features
from oed.errors import InputError
from oed.information import DesignBlocks
from oed.selectors import make_selector
from oed.selectors._greedy import greedy_select
from oed.selectors._posterior import posterior_features
from oed.selectors.kmeanspp import KMeansPPPosterior
from oed.selectors.lcmd import LCMD, _LCMDHooks


def test_posterior_features_give_the_posterior_covariance():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(30, 6))
    train = DesignBlocks(rng.normal(size=(12, 6)), np.array([0, 4, 8, 12]))  # 3 configurations × 4 rows
    Z, Z_train = posterior_features(pool, train, reg=0.5, device=torch.device("cpu"))
    sigma = np.linalg.inv(0.5 * np.eye(6) + train.rows.T @ train.rows)
    np.testing.assert_allclose(Z.numpy() @ Z.numpy().T, pool @ sigma @ pool.T, atol=1e-10)
    E = train.energy_rows()
    np.testing.assert_allclose(Z_train.numpy() @ Z_train.numpy().T, E @ sigma @ E.T, atol=1e-10)


def test_lcmd_goes_to_the_cluster_with_most_unexplained_mass_not_the_farthest_point():
    # Two centres (training rows) at 0 and 10 on the first axis. Around the first, 20 points at
    # distance 1 (mass 20); around the second, one point at distance 2 (mass 4). FPS would take
    # that point (distance 2 > 1); LCMD takes one of the 20.
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    near = np.column_stack([np.cos(angles), np.sin(angles)])
    Z = torch.as_tensor(np.vstack([near, [[10.0, 2.0]]]), dtype=torch.float64)
    centres = torch.as_tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    picks, gains = greedy_select(_LCMDHooks(Z, centres), 1)
    assert picks[0] < 20 and gains[0] == pytest.approx(1.0)
    fps = make_selector("fps", 1).fit(Z.numpy(), X_train=centres.numpy())
    assert fps.selected_idx_[0] == 20


def test_lcmd_without_training_rows_starts_at_the_largest_variance_and_picks_distinct_points():
    X = np.random.default_rng(1).normal(size=(40, 5))
    sel = LCMD(10).fit(X)
    assert sel.selected_idx_[0] == int(np.argmax((X**2).sum(axis=1)))
    assert len(set(sel.selected_idx_.tolist())) == 10


def test_lcmd_conditions_on_force_rows_of_the_training_blocks():
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(25, 4))
    energy_only = DesignBlocks(rng.normal(size=(2, 4)), np.array([0, 1, 2]))
    with_forces = DesignBlocks(np.vstack([energy_only.rows, 30 * np.eye(4)[:2]]), np.array([0, 1, 4]))
    a = LCMD(5).fit(pool, X_train=energy_only).selected_idx_
    b = LCMD(5).fit(pool, X_train=with_forces).selected_idx_
    assert a.tolist() != b.tolist()  # the force rows shrink two directions of the posterior


def test_kmeanspp_is_reproducible_and_never_draws_a_point_on_a_centre():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    train = X[:10]
    picks = [KMeansPPPosterior(20, random_state=7, reg=1e-6).fit(X, X_train=train).selected_idx_ for _ in range(2)]
    assert picks[0].tolist() == picks[1].tolist()
    assert len(set(picks[0].tolist())) == 20
    assert not set(picks[0].tolist()) & set(range(10))  # zero distance to a training row: weight 0
    other = KMeansPPPosterior(20, random_state=8, reg=1e-6).fit(X, X_train=train).selected_idx_
    assert other.tolist() != picks[0].tolist()


def test_selectors_refuse_bad_input():
    with pytest.raises(InputError):
        LCMD(3, reg=0.0).fit(np.ones((5, 2)))
    with pytest.raises(InputError):
        KMeansPPPosterior(3).fit(np.ones((5, 2)), X_target=np.ones((2, 2)))
    with pytest.raises(InputError):
        LCMD(3).fit(np.full((5, 2), np.nan))


def _frames():
    rng = np.random.default_rng(4)
    frames = []
    for name in ("H2O", "CH3OH", "CH4"):
        for _ in range(3):
            a = molecule(name)
            a.positions += rng.normal(scale=0.05, size=a.positions.shape)
            frames.append(a)
    return frames


def test_kmm_prior_whitening_makes_the_sparse_gp_prior_the_identity():
    from oed.descriptors import SOAPDescriptor
    from oed.features import GAPKernelFeatures

    frames = _frames()
    f = GAPKernelFeatures(descriptor=SOAPDescriptor(n_max=3, l_max=2), n_sparse=4, sparse_method="fps").fit(frames)
    W = f.prior_whitening(delta=0.5)
    # α = Wβ with β ~ N(0, I) must have covariance δ² K_MM⁻¹:  Wᵀ K_MM W = δ² I
    np.testing.assert_allclose(W.T @ f.kernel_mm_ @ W, 0.25 * np.eye(f.n_features_), atol=1e-6)
    # and design_features applies it to every row, force rows included
    base = FeatureSpec(kind="gap-kernel", forces=True, n_max=3, l_max=2, n_sparse=4, sparse_method="fps")
    spec = FeatureSpec(**{**base.__dict__, "prior": "kmm", "delta": 0.5})
    X0, _, _ = design_features(frames, base)
    X1, _, _ = design_features(frames, spec)
    np.testing.assert_array_equal(X0.offsets, X1.offsets)
    np.testing.assert_allclose(X1.rows, X0.rows @ W, atol=1e-9)


def test_feature_spec_refuses_a_kmm_prior_without_kernel_features():
    with pytest.raises(InputError, match="gap-kernel"):
        FeatureSpec(kind="soap", prior="kmm").validate()
    with pytest.raises(InputError, match="prior"):
        FeatureSpec(kind="gap-kernel", prior="flat").validate()
