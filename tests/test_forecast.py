"""Offline budget forecast: monotone in the budget, consistent with the engine, calibrated scales."""

from __future__ import annotations

import numpy as np
import pytest

from oed.errors import InputError
from oed.forecast import calibrate, forecast
from oed.information import DesignBlocks


@pytest.fixture
def pool():
    rng = np.random.default_rng(2)
    return rng.normal(size=(120, 4)) @ rng.normal(size=(4, 16)) + 0.2 * rng.normal(size=(120, 16))


def test_forecast_is_monotone_and_matches_direct_computation(pool):
    reg = 1.0
    fc = forecast(pool, [2, 5, 10, 30], ["d-optimal", "random", "i-optimal"], reg=reg)
    for name, f in fc.items():
        assert f.budgets == [2, 5, 10, 30]
        assert np.all(np.diff(f.variance) <= 1e-12), name
        assert np.all(np.diff(f.effective_dimension) >= -1e-12), name
        assert np.all(np.diff(f.log_det) >= -1e-12), name
        for k, v in zip(f.budgets, f.variance):
            S = f.selected[:k]
            cov = np.linalg.inv(reg * np.eye(16) + pool[S].T @ pool[S])
            assert v == pytest.approx(np.mean(np.einsum("ij,jk,ik->i", pool, cov, pool)), rel=1e-9)
            d_eff = 16 - reg * np.trace(cov)
            assert f.effective_dimension[budgets_index(f, k)] == pytest.approx(d_eff, rel=1e-9)


def budgets_index(f, k):
    return f.budgets.index(k)


def test_budget_to_target_and_target_set(pool):
    target = pool[:10] * 1.5
    fc = forecast(pool, [1, 3, 10, 50], ["i-optimal"], X_target=target, reg=1.0, target_variance=1e9)
    assert fc["i-optimal"].budget_to_target == 1
    none = forecast(pool, [1, 3], ["random"], reg=1.0, target_variance=-1.0)
    assert none["random"].budget_to_target is None


def test_forecast_with_blocks_and_train():
    rng = np.random.default_rng(4)
    sizes = np.full(30, 4)
    blocks = DesignBlocks(rng.normal(size=(120, 5)), np.concatenate([[0], np.cumsum(sizes)]))
    train = blocks.subset([0, 1])
    fc = forecast(blocks.subset(range(2, 30)), [1, 4], ["d-optimal"], X_train=train, reg=1.0)
    f = fc["d-optimal"]
    assert np.all(np.diff(f.variance) <= 0)
    assert f.effective_dimension[0] > 0


def test_bad_budgets(pool):
    with pytest.raises(InputError, match="budgets"):
        forecast(pool, [0, 3], ["random"])
    with pytest.raises(InputError, match="pool size"):
        forecast(pool, [500], ["random"])
    with pytest.raises(InputError, match="unknown selection strategy"):
        forecast(pool, [3], ["astrology"])


def test_calibration_recovers_noise_and_prior_scales():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(2000, 8))
    noise, prior = 0.3, 1.5
    found = []
    for rep in range(5):
        alpha = prior * rng.normal(size=8)
        y = R @ alpha + noise * rng.normal(size=2000)
        found.append(calibrate(R, y))
    assert np.median([c.noise_scale for c in found]) == pytest.approx(noise, rel=0.05)
    assert np.median([c.prior_scale for c in found]) == pytest.approx(prior, rel=0.5)
    c = found[0]
    assert c.reg == pytest.approx(c.noise_scale**2 / c.prior_scale**2)
    with pytest.raises(InputError):
        calibrate(R[:1], np.ones(1))
