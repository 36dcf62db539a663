"""KARE / GCV and grouped leave-one-out against explicit refits."""

import numpy as np
import pytest

from oed.errors import InputError
from oed.risk import grouped_loo_residuals, hat_spectrum, kare, row_kare


def _ridge(R, y, lam):
    return np.linalg.solve(R.T @ R + lam * np.eye(R.shape[1]), R.T @ y)


@pytest.mark.parametrize("shape", [(40, 15), (12, 30)])  # more rows than features, and fewer
def test_kare_is_gcv_of_the_explicit_hat_matrix(shape):
    rng = np.random.default_rng(0)
    R = rng.normal(size=shape)
    y = R @ rng.normal(size=shape[1]) + 0.3 * rng.normal(size=shape[0])
    lam = 0.7
    H = R @ np.linalg.solve(R.T @ R + lam * np.eye(shape[1]), R.T)
    n = shape[0]
    gcv = np.sum(((np.eye(n) - H) @ y) ** 2) / n / (np.trace(np.eye(n) - H) / n) ** 2
    # Jacot et al.'s form: K = R Rᵀ and ridge λ/n on K/n
    K, lj = R @ R.T, lam / n
    A = np.linalg.inv(K / n + lj * np.eye(n))
    jacot = (y @ A @ A @ y / n) / (np.trace(A) / n) ** 2
    assert kare(R, y, lam) == pytest.approx(gcv, rel=1e-9)
    assert kare(R, y, lam) == pytest.approx(jacot, rel=1e-9)
    assert np.mean(row_kare(R, y, lam)) == pytest.approx(gcv, rel=1e-9)


def test_kare_tracks_the_test_error_of_a_well_specified_model():
    # averaged over 30 draws of the training set: one draw's KARE scatters by ~√(2/n) of the noise
    rng = np.random.default_rng(1)
    d, n, noise = 20, 200, 0.5
    w = rng.normal(size=d)
    Rt = rng.normal(size=(5000, d))
    yt = Rt @ w + noise * rng.normal(size=5000)
    est, test, train = [], [], []
    for _ in range(30):
        R = rng.normal(size=(n, d))
        y = R @ w + noise * rng.normal(size=n)
        alpha = _ridge(R, y, 1.0)
        est.append(kare(R, y, 1.0))
        test.append(np.mean((yt - Rt @ alpha) ** 2))
        train.append(np.mean((y - R @ alpha) ** 2))
    assert np.mean(est) == pytest.approx(np.mean(test), rel=0.05)
    assert np.mean(train) < 0.95 * np.mean(test)  # what KARE corrects: the training error is optimistic


def test_grouped_loo_equals_refitting_without_each_group():
    rng = np.random.default_rng(2)
    sizes = [1, 4, 3, 4, 2, 4]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    R = rng.normal(size=(offsets[-1], 9))
    y = rng.normal(size=offsets[-1])
    got = grouped_loo_residuals(R, y, 0.4, offsets)
    for a, b in zip(offsets[:-1], offsets[1:]):
        keep = np.r_[0:a, b:len(y)]
        alpha = _ridge(R[keep], y[keep], 0.4)
        np.testing.assert_allclose(got[a:b], y[a:b] - R[a:b] @ alpha, rtol=1e-8, atol=1e-10)
    # a precomputed spectrum gives the same answers
    spectrum = hat_spectrum(R, 0.4)
    np.testing.assert_allclose(grouped_loo_residuals(R, y, 0.4, offsets, spectrum=spectrum), got)
    np.testing.assert_allclose(row_kare(R, y, 0.4, spectrum=spectrum), row_kare(R, y, 0.4))


def test_bad_input_is_refused_with_a_reason():
    R = np.ones((4, 2))
    with pytest.raises(InputError, match="ridge"):
        kare(R, np.ones(4), 0.0)
    with pytest.raises(InputError, match="agree"):
        kare(R, np.ones(3), 1.0)
    with pytest.raises(InputError, match="offsets"):
        grouped_loo_residuals(R, np.ones(4), 1.0, [0, 2, 5])
    with pytest.raises(InputError, match="finite"):
        kare(np.full((4, 2), np.nan), np.ones(4), 1.0)
