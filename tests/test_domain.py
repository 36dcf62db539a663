"""MaxVol and the extrapolation grade γ: brute force on tiny matrices, invariants on real SOAP features."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from oed.descriptors import SOAPDescriptor
from oed.domain import (
    GAMMA_STOP,
    GAMMA_TOLERANCE,
    GAMMA_WARN,
    ExtrapolationGrade,
    fit_active_set,
    flag,
    maxvol,
    plot_gamma,
)
from oed.errors import InputError, NotFittedError

SMALL_SOAP = dict(n_max=3, l_max=2, r_cut=4.0)


def absdet(M):
    return abs(np.linalg.det(M))


# ------------------------------------------------------------------ maxvol
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tol", [1.0, 1.01, 1.2])
def test_maxvol_is_locally_maximal_against_brute_force(seed, tol):
    rng = np.random.default_rng(seed)
    n, r = 8, 3
    A = rng.normal(size=(n, r)) * rng.uniform(0.2, 3.0, size=(n, 1))  # uneven row norms
    S = maxvol(A, tol=tol)
    assert S.shape == (r,) and len(set(S.tolist())) == r
    vol = absdet(A[S])
    # no single swap raises |det| by more than the factor tol
    for j, i in itertools.product(range(r), range(n)):
        if i in S:
            continue
        T = S.copy()
        T[j] = i
        assert absdet(A[T]) <= tol * vol * (1 + 1e-9)
    # every row is a combination of the active rows with coefficients <= tol
    B = A @ np.linalg.inv(A[S])
    assert np.abs(B).max() <= max(tol, 1.0) + 1e-9
    # and the global optimum is within the Hadamard bound (tol·√r)^r of it
    best = max(absdet(A[list(c)]) for c in itertools.combinations(range(n), r))
    assert vol <= best * (1 + 1e-12)
    assert vol >= best / (tol * np.sqrt(r)) ** r


def test_maxvol_finds_the_obvious_submatrix():
    A = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.5, 0.5]])
    assert sorted(maxvol(A).tolist()) == [1, 2]


def test_maxvol_square_matrix_takes_every_row():
    A = np.random.default_rng(3).normal(size=(4, 4))
    assert sorted(maxvol(A).tolist()) == [0, 1, 2, 3]


def test_maxvol_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="at least as many rows"):
        maxvol(rng.normal(size=(2, 3)))
    A = rng.normal(size=(6, 3))
    A[:, 2] = A[:, 0] - A[:, 1]  # rank 2
    with pytest.raises(InputError, match="rank"):
        maxvol(A)
    with pytest.raises(InputError, match="rank"):
        maxvol(np.zeros((5, 2)))
    with pytest.raises(InputError, match="non-empty"):
        maxvol(np.zeros((0, 3)))
    with pytest.raises(InputError, match="non-empty"):
        maxvol(np.zeros((3, 0)))
    with pytest.raises(InputError, match="tol"):
        maxvol(rng.normal(size=(6, 3)), tol=0.9)
    with pytest.raises(InputError, match="NaN"):
        maxvol(np.full((4, 2), np.nan))


def test_maxvol_swaps_from_the_qr_start_and_warns_when_out_of_swaps():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(200, 20)) * rng.uniform(0.1, 10, size=(200, 1))
    start = maxvol(A, tol=1e9)  # the pivoted-QR start, no swaps
    assert np.abs(A @ np.linalg.inv(A[start])).max() > 1.1  # so swaps are needed
    with pytest.warns(UserWarning, match="max_iter"):
        maxvol(A, tol=1.0, max_iter=0)
    full = maxvol(A, tol=1.0)
    assert np.abs(A @ np.linalg.inv(A[full])).max() <= 1 + 1e-9
    assert absdet(A[full]) > absdet(A[start])


def test_fit_active_set_on_random_rows():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 30))
    aset = fit_active_set(X, n_components=10)
    assert aset.components.shape == (10, 30)
    assert np.allclose(aset.components @ aset.components.T, np.eye(10))
    g = aset.gamma(X)
    assert g.max() <= 1.01 + 1e-9
    assert np.allclose(g[aset.rows], 1.0)
    with pytest.raises(InputError, match="all zeros"):
        fit_active_set(np.zeros((4, 3)))
    with pytest.raises(InputError, match="empty"):
        fit_active_set(np.zeros((0, 3)))
    with pytest.raises(InputError, match="n_components"):
        fit_active_set(X, n_components=0)


# ------------------------------------------------------ the extrapolation grade
@pytest.fixture(scope="module")
def train(ethanol_pool):
    return ethanol_pool[:20]


@pytest.fixture(scope="module")
def grade(train):
    return ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP)).fit(train)


def group_rows(grade, frames, element):
    feats = grade.descriptor_.per_atom(frames)
    return np.concatenate([f[np.array(a.get_chemical_symbols()) == element] for f, a in zip(feats, frames)])


def test_training_rows_interpolate(grade, train):
    assert grade.groups_ == ["H", "C", "O"] == grade.species_
    gamma = grade.transform(train)
    assert gamma.shape == (20,)
    assert np.all(gamma <= grade.tol + 1e-9)
    assert np.allclose(gamma, grade.gamma_train_)
    per_atom = grade.gamma_per_atom(train)
    assert [len(g) for g in per_atom] == [9] * 20
    assert np.allclose(gamma, [g.max() for g in per_atom])


def test_strict_tolerance_gives_gamma_at_most_one(train):
    strict = ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP), tol=1.0).fit(train)
    assert np.all(strict.transform(train) <= 1 + 1e-9)


def test_active_rows_have_gamma_one_and_scale_linearly(grade, train):
    for element in grade.groups_:
        X = group_rows(grade, train, element)
        assert grade.n_components_[element] == min(len(X), grade.n_features_in_, 256)
        act = grade.active_set_[element]
        assert np.allclose(grade.gamma_of_features(X[act], element), 1.0, atol=1e-9)
        # γ is 1-homogeneous: doubling an active row gives exactly 2, any row 2γ
        assert np.allclose(grade.gamma_of_features(2 * X[act], element), 2.0, atol=1e-8)
        g = grade.gamma_of_features(X, element)
        assert np.allclose(grade.gamma_of_features(2 * X, element), 2 * g)
        # active_origin_ points at the same rows
        feats = grade.descriptor_.per_atom(train)
        for k, (c, a) in enumerate(grade.active_origin_[element]):
            assert train[c][a].symbol == element
            assert np.array_equal(feats[c][a], X[act[k]])


def test_gamma_ignores_directions_outside_the_span_and_residual_reports_them(train):
    grade = ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP), n_components=5).fit(train)
    assert set(grade.n_components_.values()) == {5}
    P = grade.components_["H"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=grade.n_features_in_)
    x -= P.T @ (P @ x)  # orthogonal to every kept direction
    assert grade.gamma_of_features(x[None], "H")[0] == pytest.approx(0.0, abs=1e-9)
    assert grade.residual_of_features(x[None], "H")[0] == pytest.approx(1.0)
    assert np.all((grade.residual_ > 0) & (grade.residual_ < 1))
    result = grade.grade(train[:3])
    assert result.residual.shape == (3,) and np.all(result.residual > 0)


def test_distorted_structures_extrapolate(grade, train):
    stretched = train[0].copy()
    stretched.positions *= 1.3
    squeezed = train[0].copy()
    squeezed.positions *= 0.8
    gamma = grade.transform([train[0], stretched, squeezed])
    assert gamma[0] <= grade.tol + 1e-9
    assert gamma[1] > GAMMA_WARN and gamma[2] > GAMMA_WARN


def test_unseen_element_gets_infinite_gamma_and_a_warning(train):
    # descriptor covers N, training has none: the N atom is inf, the others finite
    grade = ExtrapolationGrade(descriptor=SOAPDescriptor(species=["H", "C", "N", "O"], **SMALL_SOAP)).fit(train)
    assert grade.species_ == ["H", "C", "O"]
    mutant = train[0].copy()
    h = mutant.get_chemical_symbols().index("H")
    mutant[h].symbol = "N"
    with pytest.warns(UserWarning, match="absent from the training set.*N in 1 atom"):
        result = grade.grade([train[1], mutant])
    assert np.isinf(result.gamma_per_atom[1][h])
    others = np.delete(result.gamma_per_atom[1], h)
    assert np.all(np.isfinite(others))
    assert np.isinf(result.gamma[1]) and np.isfinite(result.gamma[0])
    assert result.residual_per_atom[1][h] == 1.0
    with pytest.raises(InputError, match="no active set for 'N'"):
        grade.gamma_of_features(np.zeros((1, grade.n_features_in_)), "N")


def test_unseen_element_outside_the_descriptor(grade, train):
    mutant = train[0].copy()
    mutant[3].symbol = "N"
    with pytest.warns(UserWarning, match="left out"):
        per_atom = grade.gamma_per_atom([mutant])[0]
    assert np.isinf(per_atom[3]) and np.isfinite(np.delete(per_atom, 3)).all()


def test_per_structure_grade(train):
    grade = ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP), per_atom=False).fit(train)
    assert grade.groups_ == ["structure"]
    assert np.all(grade.transform(train) <= grade.tol + 1e-9)
    assert np.all(grade.active_origin_["structure"][:, 1] == -1)
    with pytest.raises(InputError, match="per_atom=True"):
        grade.gamma_per_atom(train)
    mutant = train[0].copy()
    mutant[3].symbol = "N"
    with pytest.warns(UserWarning, match="N in 1 configuration"):
        assert np.isinf(grade.transform([mutant])[0])


def test_estimator_contract_and_errors(train):
    est = ExtrapolationGrade(n_components=3)
    assert est.get_params() == {"descriptor": None, "per_atom": True, "n_components": 3, "tol": 1.01}
    assert not [k for k in vars(est) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        est.transform(train)
    with pytest.raises(InputError, match="empty"):
        ExtrapolationGrade().fit([])
    for bad in (dict(n_components=0), dict(tol=0.5), dict(per_atom="yes"), dict(n_components=2.5)):
        with pytest.raises(InputError):
            ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP), **bad).fit(train)
    # the user's descriptor is not modified; transform does not change state
    d = SOAPDescriptor(**SMALL_SOAP)
    fitted = ExtrapolationGrade(descriptor=d).fit(train[:5])
    assert not hasattr(d, "species_")
    before = {k: v.copy() for k, v in fitted.active_set_.items()}
    fitted.transform(train[5:8])
    assert all(np.array_equal(before[k], fitted.active_set_[k]) for k in before)
    assert fitted.transform([]).shape == (0,)


def test_flag():
    g = np.array([0.5, 1.0, 1.5, np.inf, 30.0])
    assert flag(g).tolist() == [False, False, True, True, True]
    assert flag(g, GAMMA_WARN).tolist() == [False, False, False, True, True]
    assert flag(g, GAMMA_STOP).tolist() == [False, False, False, True, True]
    with pytest.raises(InputError):
        flag(g, 0)


def test_plot_gamma_writes_atomically(tmp_path):
    rng = np.random.default_rng(0)
    sets = {"test_MD": rng.uniform(0.3, 1.5, 50), "normal modes": rng.uniform(0.8, 30, 20), "new element": np.array([2.0, np.inf])}
    out = tmp_path / "figs" / "gamma.png"
    plot_gamma(sets, out, title="γ by set")
    assert out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["gamma.png"]
    with pytest.raises(InputError):
        plot_gamma({}, out)
    with pytest.raises(InputError):
        plot_gamma({"bad": [np.nan]}, out)


def test_training_set_graded_against_itself_is_not_flagged(train):
    # tol=1 makes every training row γ ≤ 1 up to round-off (active rows exactly 1 in exact
    # arithmetic); GAMMA_TOLERANCE must absorb that round-off so none is flagged.
    strict = ExtrapolationGrade(descriptor=SOAPDescriptor(**SMALL_SOAP), tol=1.0).fit(train)
    gamma = strict.transform(train)
    assert gamma.max() == pytest.approx(1.0, abs=1e-6)
    assert not flag(gamma).any()
    assert not flag(gamma, tol=GAMMA_TOLERANCE).any()
    # the tolerance is what keeps round-off above 1 unflagged, and only round-off
    assert flag(np.array([1.0000000000000004, 1 + 1e-3]), tol=GAMMA_TOLERANCE).tolist() == [False, True]
