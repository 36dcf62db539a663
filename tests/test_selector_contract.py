"""The estimator contract, checked for every registered selector (as scikit-learn's parametrize_with_checks).

Inputs are small real feature matrices: non-negative correlated rows like summed SOAP vectors, and
DesignBlocks with an energy row and 3N force rows per configuration.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.base import clone

from oed.design import DEFAULT_REG, rank_pool
from oed.errors import InputError, NotFittedError
from oed.forecast import forecast, score_design
from oed.information import DEFAULT_PRIOR_PRECISION, DesignBlocks
from oed.selectors import (
    REGISTRY,
    SelectorBase,
    check_is_fitted,
    make_selector,
    selector_class,
)

NAMES = sorted(REGISTRY)
K = 5
#: Settings under which a selector that declares ``uses_target`` takes a target.
TARGET_PARAMS = {"info-gain": {"acquisition": "nipv"}}


def summed_soap_like(rng, n, d=10):
    """Non-negative rows with low-rank structure plus noise, as sums of per-atom SOAP vectors are."""
    return np.abs(rng.normal(size=(n, 3)) @ rng.normal(size=(3, d))) + 0.1 * rng.random((n, d))


def with_force_rows(E, rng):
    """DesignBlocks whose block i is E[i] (energy row) followed by 3N_i force rows, N_i in 2..4 atoms."""
    sizes = 1 + 3 * rng.integers(2, 5, size=len(E))
    rows = np.vstack([np.vstack([e[None], 0.3 * rng.normal(size=(s - 1, E.shape[1]))]) for e, s in zip(E, sizes)])
    return DesignBlocks(rows, np.concatenate([[0], np.cumsum(sizes)]))


@pytest.fixture(params=["array", "blocks"])
def data(request):
    """(pool, train, target) as arrays or as DesignBlocks with force rows."""
    rng = np.random.default_rng(5)
    X, Xtr, Xtg = summed_soap_like(rng, 30), summed_soap_like(rng, 4), 1.5 * summed_soap_like(rng, 6)
    if request.param == "blocks":
        return with_force_rows(X, rng), with_force_rows(Xtr, rng), with_force_rows(Xtg, rng)
    return X, Xtr, Xtg


def build(name, k=K, **params):
    return make_selector(name, k, seed=0, **params)


def force_norms_for(X):
    """Force norms (eV/Å) of every pool configuration, a smooth function of its features."""
    rows = X.energy_rows() if isinstance(X, DesignBlocks) else np.asarray(X)
    return 0.5 + np.linalg.norm(rows, axis=1)


def fit(sel, X, **kwargs):
    """``sel.fit(X, **kwargs)``, adding the force norms that selectors tagged ``uses_force_norms`` require."""
    if sel.uses_force_norms:
        kwargs.setdefault("force_norms", force_norms_for(X))
    return sel.fit(X, **kwargs)


def assert_valid(sel, n_pool, k=K):
    idx = sel.selected_idx_
    assert isinstance(idx, np.ndarray) and idx.dtype.kind == "i" and idx.shape == (k,)
    assert len(set(idx.tolist())) == k and idx.min() >= 0 and idx.max() < n_pool
    assert sel.n_selected_ == k and isinstance(sel.n_selected_, int)
    assert isinstance(sel.gains_, np.ndarray) and sel.gains_.shape == (k,) and sel.gains_.dtype == float
    assert not np.isnan(sel.gains_).any()
    assert isinstance(sel.gains_unit_, str) and sel.gains_unit_


# ----------------------------------------------------------------------------- tags and parameters
@pytest.mark.parametrize("name", NAMES)
def test_tags_are_class_attributes_that_match_the_constructor(name):
    cls = selector_class(name)
    assert issubclass(cls, SelectorBase)
    for tag in ("uses_target", "uses_labels", "uses_random_state", "uses_prior_precision", "uses_force_norms"):
        assert isinstance(getattr(cls, tag), bool), tag
    assert isinstance(cls.gains_unit, str) and cls.gains_unit
    params = inspect.signature(cls.__init__).parameters
    assert list(params)[1] == "n_to_select"
    assert cls.uses_random_state == ("random_state" in params)
    assert cls.uses_prior_precision == ("reg" in params)
    if cls.uses_prior_precision:
        assert params["reg"].default is DEFAULT_PRIOR_PRECISION
    extra = ["force_norms"] if cls.uses_force_norms else []
    assert list(inspect.signature(cls.fit).parameters) == ["self", "X", "X_train", "y_train", "X_target", *extra]


def test_one_default_prior_precision():
    assert DEFAULT_REG is DEFAULT_PRIOR_PRECISION == 1.0
    for fn in (rank_pool, forecast, score_design):
        assert inspect.signature(fn).parameters["reg"].default is DEFAULT_PRIOR_PRECISION, fn.__name__


@pytest.mark.parametrize("name", NAMES)
def test_init_stores_only_and_clone_params_repr_work(name):
    sel = build(name)
    assert not [a for a in vars(sel) if a.endswith("_")]
    params = sel.get_params()
    assert set(vars(sel)) == set(params) and params["n_to_select"] == K
    copy = clone(sel)
    assert type(copy) is type(sel) and copy is not sel and copy.get_params() == params
    assert type(sel)(**params).get_params() == params
    assert sel.set_params(n_to_select=3) is sel and sel.get_params()["n_to_select"] == 3
    assert repr(sel).startswith(f"{type(sel).__name__}(") and "n_to_select=3" in repr(sel)
    # no validation in __init__: a bad value is stored and refused by fit
    bad = type(sel)(-1)
    assert bad.n_to_select == -1
    with pytest.raises(InputError, match="n_to_select"):
        fit(bad, np.ones((4, 3)))


# ----------------------------------------------------------------------------- fit
@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_with_valid_picks_and_is_idempotent(name, data):
    X, _, _ = data
    sel = build(name)
    with pytest.raises(NotFittedError):
        check_is_fitted(sel)
    params = sel.get_params()
    assert fit(sel, X) is sel
    assert sel.get_params() == params  # fit does not touch the parameters
    assert_valid(sel, len(X))
    assert sel.gains_unit_ == type(sel).gains_unit
    picks, gains = sel.selected_idx_.copy(), sel.gains_.copy()
    fit(sel, X)
    np.testing.assert_array_equal(sel.selected_idx_, picks)
    np.testing.assert_array_equal(sel.gains_, gains)
    again = clone(sel)
    assert not hasattr(again, "selected_idx_")  # a clone is unfitted
    np.testing.assert_array_equal(fit(again, X).selected_idx_, picks)  # same seed, same picks


@pytest.mark.parametrize("name", NAMES)
def test_conditioning_on_a_training_set_keeps_picks_valid(name, data):
    X, Xtr, _ = data
    sel = fit(build(name), X, X_train=Xtr)
    assert_valid(sel, len(X))


@pytest.mark.parametrize("name", NAMES)
def test_target_refused_exactly_when_not_used(name, data):
    X, _, Xtg = data
    cls = selector_class(name)
    if not cls.uses_target:
        with pytest.raises(InputError, match="target"):
            fit(build(name), X, X_target=Xtg)
    else:
        assert_valid(fit(build(name, **TARGET_PARAMS.get(name, {})), X, X_target=Xtg), len(X))


def test_info_gain_takes_a_target_only_with_nipv(data):
    X, _, Xtg = data
    with pytest.raises(InputError, match="nipv"):
        build("info-gain").fit(X, X_target=Xtg)
    assert build("info-gain", acquisition="nipv").fit(X, X_target=Xtg).gains_unit_ == "variance reduction"


@pytest.mark.parametrize("name", NAMES)
def test_labels_are_ignored_by_label_free_selectors(name, data):
    X, Xtr, _ = data
    y = np.linspace(-2.0, 3.0, len(Xtr)) ** 2  # eV
    with_y = fit(build(name), X, X_train=Xtr, y_train=y)
    assert_valid(with_y, len(X))
    if not selector_class(name).uses_labels:
        without = fit(build(name), X, X_train=Xtr)
        np.testing.assert_array_equal(with_y.selected_idx_, without.selected_idx_)
        np.testing.assert_array_equal(with_y.gains_, without.gains_)


# ----------------------------------------------------------------------------- warm start
@pytest.mark.parametrize("name, params", [
    ("d-optimal", {"exchange": False}),
    ("a-optimal", {}),
    ("i-optimal", {}),
    ("fps", {}),
    ("ggfps", {"beta": 1.5}),  # a constant β: a β schedule restarts with each fit
    ("info-gain", {}),
    ("info-gain", {"acquisition": "nipv"}),
])
def test_continued_selection_equals_the_fresh_one(name, params):
    # scikit-matter's warm-start check: labelling the first picks and selecting again from the rest
    # gives the rest of the fresh selection, with the same gains.
    X = summed_soap_like(np.random.default_rng(8), 30)
    target = {"X_target": X} if name == "i-optimal" or params.get("acquisition") == "nipv" else {}
    fresh = fit(build(name, 8, **params), X, **target)  # fit() derives force norms row by row: a continued run sees the same ones
    first = fresh.selected_idx_[:3]
    rest = np.setdiff1d(np.arange(len(X)), first)
    cont = fit(build(name, 5, **params), X[rest], X_train=X[first], **target)
    np.testing.assert_array_equal(rest[cont.selected_idx_], fresh.selected_idx_[3:])
    np.testing.assert_allclose(cont.gains_, fresh.gains_[3:], rtol=1e-7, atol=1e-12)
