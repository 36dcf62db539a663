"""SOAP features and structure-file reading."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from oed.descriptors import SOAPDescriptor, species_of
from oed.errors import NotFittedError, PoolError, UnknownElementError
from oed.io import read_structures, reference_energy, reference_forces, structure_hash, write_structures


def test_species_from_data_and_shapes(ethanol_pool):
    frames = ethanol_pool[:4]
    d = SOAPDescriptor().fit(frames)
    assert d.species_ == ["H", "C", "O"]
    per_atom = d.per_atom(frames)
    assert len(per_atom) == 4 and per_atom[0].shape == (9, d.n_features_)
    np.testing.assert_allclose(np.linalg.norm(per_atom[0], axis=1), 1.0)
    X = d.per_structure(frames)
    assert X.shape == (4, d.n_features_)
    np.testing.assert_allclose(X[2], per_atom[2].sum(axis=0))


def test_features_are_invariant_to_rotation_and_permutation(ethanol_pool):
    a = ethanol_pool[0]
    b = a.copy()
    b.rotate(37, "z", center="COM")
    b.rotate(80, "x", center="COM")
    perm = np.random.default_rng(0).permutation(len(b))
    b = b[perm]
    d = SOAPDescriptor().fit([a])
    np.testing.assert_allclose(d.per_structure([a]), d.per_structure([b]), atol=1e-8)


def test_mixed_sizes():
    frames = [molecule("H2O"), molecule("CH4"), molecule("CH3OH")]
    d = SOAPDescriptor(n_max=3, l_max=2).fit(frames)
    assert species_of(frames) == ["H", "C", "O"]
    assert d.per_structure(frames).shape == (3, d.n_features_)


def test_uncovered_element_is_a_clear_error():
    d = SOAPDescriptor(n_max=2, l_max=2, species=["H", "O"]).fit([molecule("H2O")])
    with pytest.raises(UnknownElementError, match="configuration 1 contains N"):
        d.per_structure([molecule("H2O"), molecule("NH3")])
    with pytest.raises(NotFittedError):
        SOAPDescriptor().per_structure([molecule("H2O")])


def test_read_plain_and_ref_keys(ethanol_dir, tmp_path):
    plain = read_structures(ethanol_dir / "train.xyz")[0]
    assert reference_energy(plain) == pytest.approx(-4209.4657843064815)
    assert reference_forces(plain).shape == (9, 3)
    a = plain.copy()
    a.info["REF_energy"] = -1.5
    a.arrays["REF_forces"] = np.zeros((9, 3))
    write_structures(tmp_path / "ref.xyz", [a])
    back = read_structures(tmp_path / "ref.xyz")[0]
    assert reference_energy(back) == -1.5 and np.all(reference_forces(back) == 0)
    bare = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    assert reference_energy(bare) is None and reference_forces(bare) is None


def test_hash_survives_extxyz_round_trip(ethanol_pool, tmp_path):
    write_structures(tmp_path / "x.xyz", ethanol_pool[:5])
    back = read_structures(tmp_path / "x.xyz")
    assert [structure_hash(a) for a in back] == [structure_hash(a) for a in ethanol_pool[:5]]
    assert len({structure_hash(a) for a in ethanol_pool}) == len(ethanol_pool)


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), ("", "empty"), ("3\nnot a header\nH 0 0\n", "cannot read")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "pool.xyz"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PoolError, match=message):
        read_structures(path, what="pool")
