"""Tests of loops.xtb with the real tblite (GFN2-xTB: milliseconds per molecule)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree

from loops.errors import SCFNotConverged, SetupError
from loops.labelers import LabelResult
from loops.xtb import isolated_atom_energies_xtb, label_many_xtb, label_xtb
from oed.io import REF_ENERGY, REF_FORCES

pytest.importorskip("tblite")


def _distorted(name: str, seed: int = 0, scale: float = 0.05) -> Atoms:
    atoms = molecule(name)
    atoms.positions += np.random.default_rng(seed).normal(scale=scale, size=atoms.positions.shape)
    return atoms


def test_water_energy_matches_tblite_documented_value_in_ev():
    # tblite's own documentation (tblite.ase module docstring) gives -137.96777594 eV for
    # ase.build.molecule("H2O") at GFN2-xTB: -5.0703 Hartree, i.e. eV and not Hartree here.
    out = label_xtb(molecule("H2O"))
    assert out.info[REF_ENERGY] == pytest.approx(-137.96777594, abs=1e-4)
    assert out.info[REF_ENERGY] / Hartree == pytest.approx(-5.0703, abs=1e-3)
    assert out.arrays[REF_FORCES].shape == (3, 3)
    assert out.info["level_of_theory"] == "gfn2-xtb"


@pytest.mark.parametrize("name", ["H2O", "CH4"])
def test_forces_are_minus_energy_gradient(name):
    atoms = _distorted(name, seed=1)
    forces = label_xtb(atoms).arrays[REF_FORCES]
    h = 1e-4
    for i, k in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(label_xtb(plus).info[REF_ENERGY] - label_xtb(minus).info[REF_ENERGY]) / (2 * h)
        assert forces[i, k] == pytest.approx(fd, abs=1e-4)


def test_label_keeps_info_and_drops_plain_labels():
    atoms = molecule("CH4")
    atoms.info.update(config_type="test", energy=1.0, qm9_index=1)
    atoms.arrays["forces"] = np.zeros((5, 3))
    out = label_xtb(atoms)
    assert out.info["config_type"] == "test" and out.info["qm9_index"] == 1
    assert "energy" not in out.info and "forces" not in out.arrays
    assert atoms.info["energy"] == 1.0  # the caller's atoms are untouched


def test_gfn1_differs_from_gfn2_and_method_is_case_insensitive():
    e2 = label_xtb(molecule("H2O"), method="GFN2-xTB").info[REF_ENERGY]
    e1 = label_xtb(molecule("H2O"), method="gfn1-xtb").info[REF_ENERGY]
    assert abs(e1 - e2) > 1.0


@pytest.mark.parametrize(
    "kwargs", [{"method": "gfn0-xtb"}, {"method": "pbe/def2-svp"}, {"charge": 0.5}, {"max_iterations": 0}]
)
def test_bad_settings_raise_setup_error(kwargs):
    with pytest.raises(SetupError):
        label_xtb(molecule("H2O"), **kwargs)
    with pytest.raises(SetupError):
        label_many_xtb([molecule("H2O")], progress=False, **kwargs)


def test_periodic_structure_and_bad_workers_raise_setup_error_before_work():
    periodic = molecule("H2O", vacuum=3.0)
    periodic.pbc = True
    with pytest.raises(SetupError):
        label_many_xtb([molecule("CH4"), periodic], progress=False)
    with pytest.raises(SetupError):
        label_many_xtb([molecule("CH4")], workers=0, progress=False)


def test_unconverged_scc_is_a_failed_result_never_a_label():
    with pytest.raises(SCFNotConverged):
        label_xtb(molecule("H2O"), max_iterations=1)
    results = label_many_xtb([molecule("H2O"), molecule("CH4")], max_iterations=1, workers=1, progress=False)
    assert [r.ok for r in results] == [False, False]
    assert all(r.atoms is None and "SCFNotConverged" in r.error for r in results)


def test_parallel_matches_serial_in_input_order():
    frames = [_distorted(n, seed=i) for i, n in enumerate(["H2O", "CH4", "NH3", "CH3OH", "H2O", "C2H6"])]
    for i, atoms in enumerate(frames):
        atoms.info["tag"] = i
    seen: list[LabelResult] = []
    serial = label_many_xtb(frames, workers=1, progress=False)
    parallel = label_many_xtb(frames, workers=2, progress=False, on_result=seen.append)
    assert [r.index for r in parallel] == list(range(len(frames)))
    assert sorted(r.index for r in seen) == list(range(len(frames)))
    for s, p, atoms in zip(serial, parallel, frames):
        assert s.ok and p.ok
        assert p.atoms.info["tag"] == atoms.info["tag"]
        np.testing.assert_allclose(p.atoms.positions, atoms.positions)
        assert p.atoms.info[REF_ENERGY] == pytest.approx(s.atoms.info[REF_ENERGY], abs=1e-8)
        np.testing.assert_allclose(p.atoms.arrays[REF_FORCES], s.atoms.arrays[REF_FORCES], atol=1e-7)


def test_isolated_atom_energies_are_below_zero_and_cached_per_symbol():
    e0 = isolated_atom_energies_xtb(["H", "C", "H", "O"])
    assert list(e0) == ["H", "C", "O"]
    assert all(v < 0 for v in e0.values())
    # atomisation energy of water is positive and a few eV (experiment: 10.1 eV)
    water = label_xtb(molecule("H2O")).info[REF_ENERGY]
    assert 5.0 < e0["O"] + 2 * e0["H"] - water < 20.0
    with pytest.raises(SetupError):
        isolated_atom_energies_xtb(["Kr"])
