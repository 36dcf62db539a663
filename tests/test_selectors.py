"""Selectors and the information-matrix maths, checked against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from oed.engine import InformationState
from oed.errors import InputError, NotFittedError
from oed.information import log_det_information
from oed.selectors import available, check_is_fitted, make_selector, selector_class
from oed.selectors._greedy import greedy
from oed.selectors.d_optimal import GreedyDOptimal
from oed.selectors.random import RandomSelector


@pytest.fixture
def pool():
    rng = np.random.default_rng(1)
    # low-rank + noise so the design problem has structure
    return rng.normal(size=(40, 3)) @ rng.normal(size=(3, 12)) + 0.1 * rng.normal(size=(40, 12))


def brute_logdet(X, reg):
    return np.linalg.slogdet(reg * np.eye(X.shape[1]) + X.T @ X)[1]


def test_registry_names():
    assert {"random", "d-optimal"} <= set(available())
    assert selector_class("d-optimal") is GreedyDOptimal
    with pytest.raises(InputError, match="unknown selection strategy"):
        selector_class("nope")


def test_gains_equal_half_log_det_increments(pool):
    reg = 0.5
    sel = GreedyDOptimal(8, reg=reg, exchange=False).fit(pool)
    idx = sel.selected_idx_
    for t in range(len(idx)):
        before = brute_logdet(pool[idx[:t]], reg) if t else pool.shape[1] * np.log(reg)
        after = brute_logdet(pool[idx[: t + 1]], reg)
        assert sel.gains_[t] == pytest.approx(0.5 * (after - before), rel=1e-8, abs=1e-10)


def test_each_pick_is_the_best_single_addition(pool):
    reg = 0.5
    idx = GreedyDOptimal(5, reg=reg, exchange=False).fit(pool).selected_idx_
    for t in range(len(idx)):
        scores = [
            brute_logdet(pool[list(idx[:t]) + [j]], reg) if j not in idx[:t] else -np.inf
            for j in range(len(pool))
        ]
        assert idx[t] == int(np.argmax(scores))


def test_gains_non_increasing_and_distinct(pool):
    sel = GreedyDOptimal(30, reg=1e-2).fit(pool)
    assert np.all(np.diff(sel.gains_) <= 1e-12)
    assert len(set(sel.selected_idx_)) == 30 == sel.n_selected_


def test_greedy_is_near_optimal_on_tiny_pool(pool):
    # submodularity guarantee (1 - 1/e) holds for the *gain* over the prior
    X, reg, k = pool[:10], 0.5, 3
    base = X.shape[1] * np.log(reg)
    best = max(brute_logdet(X[list(c)], reg) for c in itertools.combinations(range(10), k)) - base
    greedy = brute_logdet(X[GreedyDOptimal(k, reg=reg).fit(X).selected_idx_], reg) - base
    assert greedy >= (1 - 1 / np.e) * best


def test_log_det_helper_matches_brute_force(pool):
    assert log_det_information(pool[:5], reg=0.3) == pytest.approx(brute_logdet(pool[:5], 0.3))
    assert log_det_information(pool, reg=0.3) == pytest.approx(brute_logdet(pool, 0.3))
    got = log_det_information(pool[:4], reg=0.3, X_train=pool[10:13])
    assert got == pytest.approx(brute_logdet(np.vstack([pool[10:13], pool[:4]]), 0.3))


def test_conditioning_on_train_changes_picks_and_matches_brute_force(pool):
    reg = 0.5
    train = pool[:6]
    cands = pool[6:]
    free = GreedyDOptimal(6, reg=reg, exchange=False).fit(cands)
    cond = GreedyDOptimal(6, reg=reg, exchange=False).fit(cands, X_train=train)
    assert list(free.selected_idx_) != list(cond.selected_idx_)
    before = brute_logdet(train, reg)
    after = brute_logdet(np.vstack([train, cands[cond.selected_idx_[:1]]]), reg)
    assert cond.gains_[0] == pytest.approx(0.5 * (after - before))


def test_d_optimal_beats_random_on_log_det(pool):
    reg = 1e-2
    d = GreedyDOptimal(10, reg=reg).fit(pool)
    for seed in range(5):
        r = RandomSelector(10, random_state=seed, reg=reg).fit(pool)
        assert log_det_information(pool[d.selected_idx_], reg=reg) >= log_det_information(
            pool[r.selected_idx_], reg=reg
        )


def test_deterministic_for_a_seed(pool):
    a = make_selector("random", 7, seed=3).fit(pool).selected_idx_
    b = make_selector("random", 7, seed=3).fit(pool).selected_idx_
    c = make_selector("random", 7, seed=4).fit(pool).selected_idx_
    assert list(a) == list(b) and list(a) != list(c)
    d1 = make_selector("d-optimal", 7, seed=0).fit(pool)
    d2 = make_selector("d-optimal", 7, seed=99).fit(pool)
    assert list(d1.selected_idx_) == list(d2.selected_idx_)


def test_random_gains_score_the_random_order(pool):
    reg = 0.5
    r = RandomSelector(4, random_state=0, reg=reg).fit(pool)
    _, gains = greedy(InformationState(pool, reg=reg), 4, lambda st: st.log_det_gain(), order=r.selected_idx_)
    np.testing.assert_allclose(r.gains_, gains)
    idx = r.selected_idx_
    assert r.gains_[1] == pytest.approx(0.5 * (brute_logdet(pool[idx[:2]], reg) - brute_logdet(pool[idx[:1]], reg)))


def test_fit_is_idempotent_and_init_does_no_work(pool):
    sel = GreedyDOptimal(5)
    assert not hasattr(sel, "selected_idx_")
    with pytest.raises(NotFittedError):
        check_is_fitted(sel)
    first = sel.fit(pool).selected_idx_.copy()
    assert list(sel.fit(pool).selected_idx_) == list(first)


@pytest.mark.parametrize(
    "X, k, message",
    [
        (np.zeros((0, 3)), 2, "empty"),
        (np.ones(5), 2, "2-D"),
        (np.array([[np.nan, 1.0]]), 1, "NaN"),
        (np.ones((4, 3)), 0, "positive integer"),
        (np.ones((4, 3)), 2.5, "positive integer"),
    ],
)
def test_bad_input_raises_clear_errors(X, k, message):
    for name in ("d-optimal", "random"):
        with pytest.raises(InputError, match=message):
            make_selector(name, k).fit(X)


def test_train_feature_mismatch(pool):
    with pytest.raises(InputError, match="features"):
        GreedyDOptimal(2).fit(pool, X_train=np.ones((3, 5)))


def test_budget_larger_than_pool_warns_and_truncates(pool):
    with pytest.warns(UserWarning, match="exceeds the pool size"):
        sel = GreedyDOptimal(100, reg=0.1).fit(pool)
    assert sel.n_selected_ == len(pool) and sorted(sel.selected_idx_) == list(range(len(pool)))


def test_bad_reg():
    with pytest.raises(InputError, match="reg"):
        GreedyDOptimal(2, reg=0).fit(np.ones((3, 2)))


class _CountingHooks:
    """Hooks with fixed scores that record what the driver asks of them."""

    def __init__(self, scores):
        import torch

        self.scores = torch.as_tensor(scores, dtype=torch.float64)
        self.n_candidates, self.device = len(scores), self.scores.device
        self.calls = []

    def start(self):
        self.calls.append("start")

    def score(self):
        return self.scores

    def update(self, j):
        self.calls.append(j)


def test_greedy_driver_hooks_first_order_exclude_and_ties():
    from oed.selectors._greedy import greedy_select

    hooks = _CountingHooks([1.0, 3.0, 3.0, 2.0, 0.5])
    picks, gains = greedy_select(hooks, 3)
    assert picks.tolist() == [1, 2, 3] and gains.tolist() == [3.0, 3.0, 2.0]  # ties to the lowest index
    assert hooks.calls == ["start", 1, 2, 3]  # start once, update after every pick
    hooks = _CountingHooks([1.0, 3.0, 3.0, 2.0, 0.5])
    assert greedy_select(hooks, 2, first=4)[0].tolist() == [4, 1]
    assert greedy_select(_CountingHooks([1.0, 3.0, 3.0, 2.0]), 2, order=[3, 0])[1].tolist() == [2.0, 1.0]
    exclude = np.array([False, True, False, False, False])
    assert greedy_select(_CountingHooks([1.0, 3.0, 3.0, 2.0, 0.5]), 2, exclude=exclude)[0].tolist() == [2, 3]
