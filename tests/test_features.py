"""SOAP back-ends and gradients, GAP kernel features (energy and force rows), feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read

import oed.features
from oed.cache import cached_array
from oed.descriptors import DESCRIPTORS, QuippySOAPDescriptor, SOAPDescriptor, make_descriptor
from oed.errors import InputError, NotFittedError, UnknownElementError
from oed.features import GAPKernelFeatures, soap_design_blocks
from oed.information import DesignBlocks
from oed.io import pool_hash

ETHANOL = Path(__file__).parent.parent / "data" / "ethanol"
SMALL = dict(n_max=3, l_max=2)
BACKENDS = sorted(DESCRIPTORS)
H = 1e-4  # Å, central finite differences


@pytest.fixture(scope="module")
def ethanol():
    return read(ETHANOL / "train.xyz", index=":6")


@pytest.fixture(scope="module")
def methanol():
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=1)  # break the mirror symmetry: no accidental zeros
    return atoms


def displaced(atoms, a, k, h):
    out = atoms.copy()
    out.positions[a, k] += h
    return out


def finite_difference(f, atoms, a, k):
    """Central difference of f(atoms) along atom a, direction k."""
    return (f(displaced(atoms, a, k, H)) - f(displaced(atoms, a, k, -H))) / (2 * H)


# -- descriptors -------------------------------------------------------------------------------


def test_registry_and_errors():
    assert DESCRIPTORS == {"dscribe": SOAPDescriptor, "quippy": QuippySOAPDescriptor}
    assert isinstance(make_descriptor("quippy", r_cut=4.0), QuippySOAPDescriptor)
    with pytest.raises(InputError, match="unknown descriptor"):
        make_descriptor("soapy")
    with pytest.raises(InputError, match="bad parameters"):
        make_descriptor("dscribe", bogus=1)


@pytest.mark.parametrize("name", BACKENDS)
def test_not_fitted_and_uncovered_elements(name):
    d = make_descriptor(name, species=["H", "O"], **SMALL)
    for method in (d.per_atom, d.per_atom_gradients, d.per_structure):
        with pytest.raises(NotFittedError):
            method([molecule("H2O")])
    d.fit([molecule("H2O")])
    assert d.species_ == ["H", "O"] and d.n_features_ > 0
    for method in (d.per_atom, d.per_atom_gradients, d.per_structure):
        with pytest.raises(UnknownElementError, match="configuration 1 contains C"):
            method([molecule("H2O"), molecule("CH4")])


@pytest.mark.parametrize("name", BACKENDS)
def test_per_atom_vectors_and_gradients_follow_atom_order(name, methanol):
    d = make_descriptor(name, **SMALL).fit([methanol])
    perm = np.array([3, 0, 5, 1, 4, 2])
    (q, dq), (qp, dqp) = d.per_atom_gradients([methanol, methanol[perm]])
    np.testing.assert_allclose(qp, q[perm], atol=1e-10)
    np.testing.assert_allclose(dqp, dq[perm][:, perm], atol=1e-9)
    np.testing.assert_allclose(d.per_atom([methanol])[0], q, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_match_finite_differences(name, normalize, methanol):
    d = make_descriptor(name, normalize=normalize, **SMALL).fit([methanol])
    (q, dq), = d.per_atom_gradients([methanol])
    n = len(methanol)
    assert q.shape == (n, d.n_features_) and dq.shape == (n, n, 3, d.n_features_)
    fd = np.zeros_like(dq)
    for a in range(n):
        for k in range(3):
            fd[:, a, k] = finite_difference(lambda x: d.per_atom([x])[0], methanol, a, k)
    np.testing.assert_allclose(dq, fd, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("name", BACKENDS)
def test_structure_features_are_rotation_invariant(name, ethanol):
    a = ethanol[0]
    b = a.copy()
    b.rotate(37, "z", center="COM")
    b.rotate(80, "x", center="COM")
    b.translate([0.3, -1.2, 2.0])
    d = make_descriptor(name, **SMALL).fit([a])
    np.testing.assert_allclose(d.per_structure([b]), d.per_structure([a]), atol=1e-8)


def test_quippy_normalisation_is_gap_fits_own(methanol):
    # oed asks quippy for raw vectors and normalises itself; gap_fit normalises in quippy.
    from quippy.descriptors import Descriptor

    d = QuippySOAPDescriptor(**SMALL).fit([methanol])
    res = Descriptor(
        "soap cutoff=5.0 cutoff_transition_width=1.0 l_max=2 n_max=3 atom_sigma=0.5 "
        "n_species=3 species_Z={1 6 8} Z=1"
    ).calc(methanol)
    np.testing.assert_allclose(d.per_atom([methanol])[0][res["ci"] - 1], res["data"], atol=1e-12)


def test_quippy_diagonal_radial_is_the_gaps_descriptor(methanol):
    """The radially diagonal power spectrum: S(S+1)/2·n_max·(l_max+1) numbers (+ quippy's 0),
    equal to what a GAP with diagonal_radial=T computes, with exact gradients."""
    from quippy.descriptors import Descriptor

    d = QuippySOAPDescriptor(diagonal_radial=True, **SMALL).fit([methanol])
    assert d.n_features_ == 3 * 4 // 2 * 3 * 3 + 1 < QuippySOAPDescriptor(**SMALL).fit([methanol]).n_features_
    res = Descriptor(
        "soap cutoff=5.0 cutoff_transition_width=1.0 l_max=2 n_max=3 atom_sigma=0.5 "
        "n_species=3 species_Z={1 6 8} diagonal_radial=T Z=6"
    ).calc(methanol)
    np.testing.assert_allclose(d.per_atom([methanol])[0][res["ci"] - 1], res["data"], atol=1e-12)
    (q, dq), = d.per_atom_gradients([methanol])
    fd = finite_difference(lambda x: d.per_atom([x])[0], methanol, 2, 1)
    np.testing.assert_allclose(dq[:, 2, 1], fd, atol=1e-6 * np.abs(fd).max())


def test_diagonal_radial_needs_quippy():
    from oed.design import FeatureSpec

    with pytest.raises(InputError, match="quippy"):
        FeatureSpec(diagonal_radial=True).validate()
    FeatureSpec(diagonal_radial=True, backend="quippy").validate()


# -- GAP kernel features -------------------------------------------------------------------------


def small_gap(name="dscribe", **kw):
    return GAPKernelFeatures(descriptor=make_descriptor(name, **SMALL), **kw)


@pytest.mark.parametrize("method", ["cur", "cur_points", "fps", "random"])
def test_sparse_points_are_capped_per_species(method, methanol):
    frames = [molecule("H2O"), methanol]  # 5 distinct H (H2O's two are one), 1 C, 2 O environments
    capped = small_gap(n_sparse=3, sparse_method=method).fit(frames)
    assert {s: len(p) for s, p in capped.sparse_points_.items()} == {"H": 3, "C": 1, "O": 2}
    assert capped.n_features_ == 6 and capped.transform(frames).shape == (2, 6)
    per_atom = capped.descriptor_.per_atom(frames)
    for symbol, points in capped.sparse_points_.items():
        envs = capped.sparse_envs_[symbol]
        assert all(frames[c][a].symbol == symbol for c, a in envs)
        np.testing.assert_array_equal(points, [per_atom[c][a] for c, a in envs])
    K = capped.kernel_mm_
    np.testing.assert_allclose(np.diag(K), 1.0)  # k(q̂, q̂) = 1
    assert np.all(K[:3, 3:] == 0) and np.all(K[3, 4:] == 0)  # block diagonal: H | C | O
    everything = small_gap(n_sparse=100, sparse_method=method).fit(frames)
    assert {s: len(p) for s, p in everything.sparse_points_.items()} == {"H": 5, "C": 1, "O": 2}
    assert np.linalg.eigvalsh(everything.kernel_mm_)[0] > 1e-8  # no duplicate sparse points


def test_cur_points_picks_by_leverage_like_gap_fit():
    """gap_fit's CUR keeps an environment that alone spans a strong direction; random rarely does."""
    rng = np.random.default_rng(0)
    X = np.zeros((21, 4))
    X[:20, 0] = 1.0
    X[:20, 2:] = 0.05 * rng.normal(size=(20, 2))
    X[20, 1] = 10.0  # the outlier: the top singular vector, leverage 1
    picks = {method: [GAPKernelFeatures(n_sparse=3, sparse_method=method, random_state=seed)._select(X, 3)
                      for seed in range(20)] for method in ("cur_points", "random")}
    for idx in picks["cur_points"] + picks["random"]:
        assert len(idx) == 3 and len(set(idx.tolist())) == 3 and np.all(np.diff(idx) > 0)
    assert sum(20 in idx for idx in picks["cur_points"]) == 20
    assert sum(20 in idx for idx in picks["random"]) < 10  # 3/21 of the seeds on average
    again = GAPKernelFeatures(n_sparse=3, sparse_method="cur_points", random_state=4)._select(X, 3)
    np.testing.assert_array_equal(again, picks["cur_points"][4])  # seeded: reproducible


def test_repeated_environments_count_once():
    feats = small_gap(n_sparse=10).fit([molecule("H2O")] * 3)
    assert {s: len(p) for s, p in feats.sparse_points_.items()} == {"H": 1, "O": 1}
    np.testing.assert_allclose(feats.kernel_mm_, np.eye(2))


def test_energy_and_force_rows(ethanol):
    feats = small_gap(n_sparse=10).fit(ethanol)
    blocks = feats.design_blocks(ethanol[:3], forces=True, sigma_energy=0.002, sigma_force=0.05)
    assert isinstance(blocks, DesignBlocks) and blocks.sizes.tolist() == [28, 28, 28]
    assert blocks.rows.shape == (84, feats.n_features_) == (84, 10 + 10 + 6)  # O: 6 environments
    np.testing.assert_allclose(blocks.energy_rows(), feats.transform(ethanol[:3]) / (0.002 * 9), rtol=1e-12)
    energy_only = feats.design_blocks(ethanol[:3], sigma_energy=0.002)
    np.testing.assert_allclose(energy_only.rows, blocks.energy_rows(), rtol=1e-12)
    assert energy_only.sizes.tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", BACKENDS)
def test_force_rows_are_minus_finite_difference_derivatives(name, ethanol):
    feats = small_gap(name, n_sparse=5, zeta=4).fit(ethanol)
    atoms = ethanol[1]
    rows = feats.design_blocks([atoms], forces=True, sigma_force=0.02).block(0)
    for a in (2, 5):  # the O atom and an H atom
        for k in range(3):
            fd = finite_difference(lambda x: feats.transform([x])[0], atoms, a, k)
            np.testing.assert_allclose(rows[1 + 3 * a + k] * 0.02, -fd, atol=1e-6 * np.abs(fd).max())


def test_absent_species_give_zero_columns(methanol):
    feats = small_gap(n_sparse=2).fit([molecule("H2O"), methanol])
    assert feats.species_ == ["H", "C", "O"]
    c_cols = slice(2, 3)  # H: 2 sparse points, C: 1, O: 2
    rows = feats.design_blocks([molecule("H2O")], forces=True).rows
    assert rows.shape == (10, 5)
    assert np.all(rows[:, c_cols] == 0) and np.any(rows[:, :2] != 0) and np.any(rows[:, 3:] != 0)


def test_chunking_and_progress_do_not_change_rows(ethanol, monkeypatch):
    feats = small_gap(n_sparse=4).fit(ethanol)
    whole = feats.design_blocks(ethanol, forces=True)
    monkeypatch.setattr(oed.features, "_CHUNK_BYTES", 1)  # one configuration per chunk
    chunked = feats.design_blocks(ethanol, forces=True, progress=True)
    np.testing.assert_array_equal(chunked.rows, whole.rows)
    np.testing.assert_array_equal(chunked.offsets, whole.offsets)


def test_fit_is_deterministic_and_leaves_the_descriptor_alone(ethanol):
    descriptor = SOAPDescriptor(**SMALL)
    a = GAPKernelFeatures(descriptor=descriptor, n_sparse=7).fit(ethanol)
    b = GAPKernelFeatures(descriptor=descriptor, n_sparse=7).fit(ethanol)
    assert not hasattr(descriptor, "species_")
    for s in a.species_:
        np.testing.assert_array_equal(a.sparse_envs_[s], b.sparse_envs_[s])
    assert a.get_params()["descriptor"]["name"] == "dscribe"


def test_gap_features_errors(ethanol):
    with pytest.raises(NotFittedError):
        GAPKernelFeatures().transform(ethanol)
    for bad in (dict(zeta=0), dict(zeta=2.5), dict(n_sparse=0), dict(sparse_method="kmeans")):
        with pytest.raises(InputError):
            small_gap(**bad).fit(ethanol)
    with pytest.raises(InputError, match="normalize"):
        GAPKernelFeatures(descriptor=SOAPDescriptor(normalize=False, **SMALL)).fit(ethanol)
    feats = small_gap(n_sparse=2).fit(ethanol)
    with pytest.raises(InputError, match="sigma"):
        feats.design_blocks(ethanol, sigma_force=0.0)
    with pytest.raises(UnknownElementError, match="configuration 1 contains N"):
        feats.design_blocks([ethanol[0], molecule("NH3")], forces=True)


def test_summed_soap_blocks(methanol):
    d = SOAPDescriptor(**SMALL).fit([methanol])
    blocks = soap_design_blocks([methanol], d, forces=True, sigma_energy=0.001, sigma_force=0.02)
    assert blocks.rows.shape == (19, d.n_features_)
    np.testing.assert_allclose(blocks.energy_rows(), d.per_structure([methanol]) / (0.001 * 6), rtol=1e-12)
    for k in range(3):
        fd = finite_difference(lambda x: d.per_structure([x])[0], methanol, 1, k)
        np.testing.assert_allclose(blocks.rows[1 + 3 + k] * 0.02, -fd, atol=1e-6 * np.abs(fd).max())
    with pytest.raises(NotFittedError):
        soap_design_blocks([methanol], SOAPDescriptor())


# -- cache -----------------------------------------------------------------------------------


class Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_cache_hits_misses_and_kinds(tmp_path, ethanol):
    key = {"pool": pool_hash(ethanol), "features": small_gap().get_params(), "forces": True}
    blocks = DesignBlocks(np.arange(12.0).reshape(4, 3), np.array([0, 1, 4]))
    compute = Counter(blocks)
    first = cached_array(key, compute, cache_dir=tmp_path)
    again = cached_array(key, compute, cache_dir=tmp_path)
    assert compute.calls == 1 and isinstance(again, DesignBlocks)
    np.testing.assert_array_equal(again.rows, first.rows)
    np.testing.assert_array_equal(again.offsets, first.offsets)
    cached_array({**key, "forces": False}, compute, cache_dir=tmp_path)
    assert compute.calls == 2  # changed settings: a miss
    array = Counter(np.random.default_rng(0).normal(size=(5, 2)))
    a1, a2 = (cached_array({"x": np.int64(3)}, array, cache_dir=tmp_path) for _ in range(2))
    assert array.calls == 1 and a2.dtype == np.float64
    np.testing.assert_array_equal(a1, a2)
    for _ in range(2):
        cached_array(key, compute, cache_dir=False)
    assert compute.calls == 4  # disabled: always computed
    with pytest.raises(InputError, match="JSON"):
        cached_array({"x": object()}, compute, cache_dir=tmp_path)


def test_corrupt_cache_file_is_recomputed_and_env_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OED_CACHE_DIR", str(tmp_path))
    compute = Counter(np.ones((2, 2)))
    cached_array({"k": 1}, compute)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        np.testing.assert_array_equal(cached_array({"k": 1}, compute), np.ones((2, 2)))
    assert compute.calls == 2
    cached_array({"k": 1}, compute)  # overwritten with a good file
    assert compute.calls == 2
