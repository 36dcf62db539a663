"""Tests of loops.conformers: normal-mode sampling, functional groups, the QM9 sample."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from loops.conformers import (
    NormalModes,
    functional_groups,
    normal_mode_conformers,
    normal_modes,
    qm9_molecules,
    xtb_normal_modes,
)
from loops.errors import SetupError

pytest.importorskip("tblite")


def _calc():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


@pytest.fixture(scope="module")
def methanol_modes() -> NormalModes:
    from loops.xtb import omp_threads

    with omp_threads(1):
        return normal_modes(molecule("CH3OH"), _calc())


def _rms_displacement(modes: NormalModes, frames) -> float:
    return float(np.mean([np.sqrt(np.mean((a.positions - modes.atoms.positions) ** 2)) for a in frames]))


def test_normal_modes_count_and_frequencies(methanol_modes):
    freqs = methanol_modes.frequencies_cm()
    assert freqs.shape == (3 * 6 - 6,)
    # relaxed: no imaginary modes; highest mode an O-H or C-H stretch near 3000-3800 cm-1
    assert freqs.min() > 150 and 2800 < freqs.max() < 4000


def test_modes_equal_a_direct_diagonalisation_of_the_mass_weighted_hessian(methanol_modes):
    # brute force, independent of ASE: eigh of M^-1/2 H M^-1/2, the 6 smallest |eigenvalues| dropped
    from ase.data import atomic_masses

    w = 1.0 / np.sqrt(np.repeat(atomic_masses[methanol_modes.atoms.numbers], 3))
    ref_values, ref_vectors = np.linalg.eigh(methanol_modes.hessian * w[:, None] * w[None, :])
    keep = np.sort(np.argsort(np.abs(ref_values))[6:])
    values, vectors = methanol_modes.modes()
    np.testing.assert_allclose(values, ref_values[keep], rtol=1e-9)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(len(values)), atol=1e-10)
    # methanol's modes are non-degenerate: each vector is the reference one up to its sign
    np.testing.assert_allclose(np.abs(np.sum(vectors * ref_vectors[:, keep], axis=0)), 1.0, atol=1e-8)
    # 1 eV/(Å² amu) is 521.47 cm⁻¹ squared (sqrt(e/amu) / (2π c) per Å)
    np.testing.assert_allclose(methanol_modes.frequencies_cm(), np.sqrt(values) * 521.4709, rtol=1e-5)


def test_harmonic_energy_is_the_cartesian_quadratic_form(methanol_modes):
    # no mode is below min_frequency_cm, so each conformer's harmonic energy is ½ dxᵀ H dx exactly
    assert methanol_modes.frequencies_cm().min() > 100
    for conf in methanol_modes.sample(5, temperature_K=800, rng=np.random.default_rng(4)):
        dx = (conf.positions - methanol_modes.atoms.positions).ravel()
        assert 0.5 * dx @ methanol_modes.hessian @ dx == pytest.approx(conf.info["nms_harmonic_energy"], rel=1e-8)
        # rigid-body modes are not sampled: the centre of mass stays put (to the 1e-5 Å that a
        # finite-difference Hessian mixes translation into the vibrations)
        shift = conf.get_center_of_mass() - methanol_modes.atoms.get_center_of_mass()
        assert np.abs(shift).max() < 1e-4


def test_imaginary_mode_is_negative_and_displaced_as_the_softest_allowed(methanol_modes):
    values, vectors = methanol_modes.modes()
    u = vectors[:, 0] * np.sqrt(np.repeat(methanol_modes.atoms.get_masses(), 3))  # Cartesian form of mode 0
    hessian = methanol_modes.hessian - 2.0 * values[0] * np.outer(u, u)  # flips the sign of that eigenvalue
    saddle = NormalModes(methanol_modes.atoms, hessian)
    freqs = saddle.frequencies_cm()
    assert freqs[0] == pytest.approx(-methanol_modes.frequencies_cm()[0], rel=1e-8)
    assert np.all(freqs[1:] > 0)
    confs = saddle.sample(50, temperature_K=300, rng=np.random.default_rng(0))
    assert all(np.all(np.isfinite(c.positions)) for c in confs)
    assert max(np.abs(c.positions - saddle.atoms.positions).max() for c in confs) < 1.0  # Å: no torn bonds


def test_linear_molecule_has_3n_minus_5_modes():
    from loops.xtb import omp_threads

    with omp_threads(1):
        modes = normal_modes(molecule("CO2"), _calc())
    freqs = modes.frequencies_cm()
    assert freqs.shape == (4,)
    assert freqs.min() > 300  # the rotations were dropped, not a bend


def test_right_count_info_kept_and_atoms_untouched():
    atoms = molecule("H2O")
    atoms.info["qm9_index"] = 3
    before = atoms.positions.copy()
    from loops.xtb import omp_threads

    with omp_threads(1):
        confs = normal_mode_conformers(atoms, _calc(), 7, temperature_K=300, rng=np.random.default_rng(0))
    assert len(confs) == 7
    assert all(c.info["qm9_index"] == 3 and c.info["nms_temperature_K"] == 300 for c in confs)
    assert all(c.calc is None and len(c) == 3 for c in confs)
    np.testing.assert_array_equal(atoms.positions, before)


def test_displacement_grows_with_temperature_as_sqrt_t(methanol_modes):
    rms = {
        t: _rms_displacement(methanol_modes, methanol_modes.sample(200, temperature_K=t, rng=np.random.default_rng(1)))
        for t in (100.0, 400.0, 1600.0)
    }
    assert rms[100.0] < rms[400.0] < rms[1600.0]
    # the same random numbers scaled by sqrt(T): exactly a factor 2 per factor 4 in T
    assert rms[400.0] / rms[100.0] == pytest.approx(2.0, rel=1e-6)
    assert 0.01 < rms[100.0] < 0.2  # Å: small distortions at 100 K


def test_harmonic_energy_is_ani_scaled(methanol_modes):
    t = 500.0
    confs = methanol_modes.sample(2000, temperature_K=t, rng=np.random.default_rng(2))
    energies = np.array([c.info["nms_harmonic_energy"] for c in confs])
    from ase.units import kB

    top = 1.5 * len(methanol_modes.atoms) * kB * t  # 3/2 N_a k_B T times s ~ U(0, 1)
    assert energies.max() <= top * (1 + 1e-9)
    assert energies.mean() == pytest.approx(top / 2, rel=0.05)


def test_same_seed_same_conformers(methanol_modes):
    a = methanol_modes.sample(5, temperature_K=300, rng=np.random.default_rng(3))
    b = methanol_modes.sample(5, temperature_K=300, rng=np.random.default_rng(3))
    c = methanol_modes.sample(5, temperature_K=300, rng=np.random.default_rng(4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
    assert not np.allclose(a[0].positions, c[0].positions)


def test_sample_rejects_bad_temperature(methanol_modes):
    with pytest.raises(SetupError):
        methanol_modes.sample(2, temperature_K=0.0, rng=np.random.default_rng(0))
    with pytest.raises(SetupError):
        normal_modes(Atoms("H"), _calc())


def test_save_load_round_trip(methanol_modes, tmp_path):
    modes = NormalModes(methanol_modes.atoms.copy(), methanol_modes.hessian)
    modes.atoms.info["qm9_index"] = 9
    modes.save(tmp_path / "m.npz")
    back = NormalModes.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.hessian, modes.hessian)
    np.testing.assert_array_equal(back.atoms.positions, modes.atoms.positions)
    assert back.atoms.info["qm9_index"] == 9


def test_xtb_normal_modes_caches_and_keeps_order(tmp_path):
    mols = [molecule("H2O"), molecule("NH3")]
    mols[1].info["tag"] = "ammonia"
    first = xtb_normal_modes(mols, cache_dir=tmp_path, workers=1, progress=False)
    assert [m.atoms.get_chemical_formula() for m in first] == ["H2O", "H3N"]
    assert first[1].atoms.info["tag"] == "ammonia"
    files = sorted(tmp_path.glob("gfn2-xtb_*.npz"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = xtb_normal_modes(mols, cache_dir=tmp_path, workers=1, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not recomputed
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.hessian, b.hessian)
    assert len(first[0].frequencies_cm()) == 3


# ------------------------------------------------------------------ functional groups


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CH4", set()),
        ("C2H6", set()),
        ("CH3OH", {"hydroxyl"}),
        ("CH3CH2OH", {"hydroxyl"}),
        ("CH3OCH3", {"ether"}),
        ("HCOOH", {"carbonyl", "hydroxyl"}),
        ("CH3CHO", {"carbonyl"}),
        ("CH3COCH3", {"carbonyl"}),
        ("CH3CN", {"nitrile"}),
        ("CH3CONH2", {"carbonyl", "amide"}),
        ("H3CNH2", {"amine"}),
        ("C3H9N", {"amine"}),
        ("CH3NO2", set()),
        ("C5H5N", set()),
        ("C2H2", {"alkyne"}),
        ("C6H6", set()),
        ("C2H4", set()),
    ],
)
def test_functional_groups_of_hand_built_molecules(name, expected):
    assert functional_groups(molecule(name)) == expected


def test_functional_groups_ignore_the_cell():
    atoms = molecule("CH3CONH2")
    atoms.cell = [4.0, 4.0, 4.0]  # images closer than a bond length would otherwise bond
    atoms.pbc = True
    assert functional_groups(atoms) == {"carbonyl", "amide"}


def test_stretched_carbonyl_is_not_a_carbonyl():
    atoms = molecule("CH3CHO")
    o = atoms.get_chemical_symbols().index("O")
    c = int(np.argmin([atoms.get_distance(o, j) if j != o else 9 for j in range(len(atoms))]))
    atoms.set_distance(c, o, 1.42, fix=0)  # a C-O single-bond length
    assert "carbonyl" not in functional_groups(atoms)


# ------------------------------------------------------------------------------- QM9


def test_qm9_molecules_deterministic_and_filtered():
    pytest.importorskip("pandas")  # qm9pack's dependency: a proxy for qm9pack being installed
    a = qm9_molecules(6, elements=("C", "H", "O"), max_heavy_atoms=5, seed=7)
    b = qm9_molecules(6, elements=("C", "H", "O"), max_heavy_atoms=5, seed=7)
    c = qm9_molecules(6, elements=("C", "H", "O"), max_heavy_atoms=5, seed=8)
    assert [m.info["qm9_index"] for m in a] == [m.info["qm9_index"] for m in b]
    assert [m.info["qm9_index"] for m in a] != [m.info["qm9_index"] for m in c]
    for m, n in zip(a, b):
        np.testing.assert_array_equal(m.positions, n.positions)
    for m in a + c:
        symbols = set(m.get_chemical_symbols())
        assert symbols <= {"C", "H", "O"}
        assert 1 <= sum(s != "H" for s in m.get_chemical_symbols()) <= 5
        assert isinstance(m.info["smiles"], str) and m.info["smiles"]
        assert not m.pbc.any()
        # a QM9 equilibrium geometry: every H sits on something within 1.2 Å
        d = m.get_all_distances() + np.eye(len(m)) * 10
        assert all(d[i].min() < 1.2 for i, s in enumerate(m.get_chemical_symbols()) if s == "H")


def test_qm9_required_exclude_and_errors():
    got = qm9_molecules(4, elements=("C", "H", "O"), required=("O",), max_heavy_atoms=5, seed=1)
    assert all("O" in m.get_chemical_symbols() for m in got)
    skip = {m.info["qm9_index"] for m in got}
    again = qm9_molecules(4, elements=("C", "H", "O"), required=("O",), max_heavy_atoms=5, seed=1, exclude=skip)
    assert skip.isdisjoint(m.info["qm9_index"] for m in again)
    first = qm9_molecules(1, elements=("C", "H", "O"), max_heavy_atoms=5, seed=0)
    assert first[0].info["qm9_index"] >= 1
    with pytest.raises(SetupError):
        qm9_molecules(2, elements=("C", "Cl"))
    with pytest.raises(SetupError):
        qm9_molecules(10**6, elements=("C", "H", "O"), max_heavy_atoms=5)
    with pytest.raises(SetupError):
        qm9_molecules(1, elements=("C", "H"), required=("O",))


def test_qm9_carbonyl_detection_agrees_with_smiles():
    # geometry-based detection against the QM9 SMILES: "=O" marks C=O in these CHO molecules
    mols = qm9_molecules(60, elements=("C", "H", "O"), max_heavy_atoms=5, seed=3)
    for m in mols:
        smiles = m.info["smiles"]
        assert ("carbonyl" in functional_groups(m)) == ("=O" in smiles or smiles.startswith("O=")), smiles
