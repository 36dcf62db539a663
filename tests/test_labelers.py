"""Tests of loops.labelers with real PySCF (hf/sto-3g unless marked integration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree

from loops.errors import SCFNotConverged, SetupError
from loops.labelers import (
    GROUND_STATE_SPIN,
    LabelResult,
    PySCFLabeler,
    isolated_atom_energies,
    label,
    label_many,
    parse_level_of_theory,
)
from oed.io import REF_ENERGY, REF_FORCES, read_structures, reference_energy, reference_forces

DATA = Path(__file__).parent.parent / "data" / "ethanol"
FAST = {"method": "hf/sto-3g", "density_fit": False}


def _water(shift: float = 0.0) -> Atoms:
    atoms = molecule("H2O")
    atoms.positions[1, 0] += shift
    return atoms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pbe/def2-svp", ("pbe", "def2-svp")),
        (" PBE / def2-SVP ", ("pbe", "def2-svp")),
        ("HF/STO-3G", ("hf", "sto-3g")),
        ("b3lyp/6-31g*", ("b3lyp", "6-31g*")),
    ],
)
def test_parse_level_of_theory(text, expected):
    assert parse_level_of_theory(text) == expected


@pytest.mark.parametrize(
    "bad", ["pbe", "pbe/def2-svp/x", "/sto-3g", "pbe/", "notafunctional/sto-3g", "pbe/notabasis", 3]
)
def test_bad_method_raises_setup_error_before_any_calculation(bad):
    with pytest.raises(SetupError):
        parse_level_of_theory(bad)
    with pytest.raises(SetupError):
        PySCFLabeler(method=bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"charge": 0.5}, {"spin": -1}, {"conv_tol": 0.0}, {"max_cycle": 0}, {"threads": 0}, {"xc": "pbe"}],
)
def test_bad_parameters_raise_setup_error(kwargs):
    with pytest.raises(SetupError):
        PySCFLabeler(**kwargs)


def test_level_of_theory_is_canonical():
    assert PySCFLabeler(method=" PBE / Def2-SVP").level_of_theory == "pbe/def2-svp"
    assert PySCFLabeler().level_of_theory == "pbe/def2-svp"


def test_energy_and_forces_units_and_shapes():
    from pyscf import gto, scf

    atoms = _water()
    atoms.calc = PySCFLabeler(**FAST)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert isinstance(energy, float)
    assert forces.shape == (3, 3)

    mol = gto.M(
        atom=[(s, tuple(r)) for s, r in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis="sto-3g",
        verbose=0,
    )
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-9
    e_hartree = mf.kernel()
    grad = mf.nuc_grad_method().kernel()
    assert energy == pytest.approx(e_hartree * Hartree, abs=1e-6)
    np.testing.assert_allclose(forces, -grad * Hartree / Bohr, atol=1e-5)
    # Newton's third law: an isolated molecule feels no net force.
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-4)


def test_forces_are_minus_energy_gradient():
    calc = PySCFLabeler(**FAST, conv_tol=1e-12)
    atoms = _water(0.05)
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-3  # Å
    atom, axis = 1, 0
    energies = []
    for sign in (+1, -1):
        displaced = atoms.copy()
        displaced.positions[atom, axis] += sign * h
        displaced.calc = calc
        energies.append(displaced.get_potential_energy())
    fd_force = -(energies[0] - energies[1]) / (2 * h)
    assert fd_force == pytest.approx(forces[atom, axis], abs=1e-3)


def test_label_writes_ref_keys_and_keeps_info():
    atoms = _water()
    atoms.info["config_type"] = "Training_set"
    atoms.info["OH_dist"] = 0.97
    atoms.info["energy"] = -1.0
    atoms.arrays["forces"] = np.ones((3, 3))
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.ones((3, 3)))

    out = label(atoms, **FAST)

    assert out is not atoms
    assert out.calc is None
    assert out.info["config_type"] == "Training_set"
    assert out.info["OH_dist"] == 0.97
    assert out.info["level_of_theory"] == "hf/sto-3g"
    assert "energy" not in out.info and "forces" not in out.arrays
    assert out.arrays[REF_FORCES].shape == (3, 3)
    assert reference_energy(out) == pytest.approx(-2039.885, abs=1e-2)
    np.testing.assert_array_equal(reference_forces(out), out.arrays[REF_FORCES])
    # the input is left alone
    assert atoms.info["energy"] == -1.0 and REF_ENERGY not in atoms.info


def test_odd_electron_count_with_singlet_spin_raises():
    with pytest.raises(SetupError, match="parity"):
        label(Atoms("H"), **FAST, spin=0)
    with pytest.raises(SetupError, match="parity"):
        label(_water(), **FAST, charge=1, spin=0)
    with pytest.raises(SetupError):
        label(Atoms("H", cell=[5, 5, 5], pbc=True), **FAST)


def test_spin_none_picks_doublet_for_odd_electrons():
    calc = PySCFLabeler(**FAST)
    assert calc.spin_for(molecule("OH")) == 1
    assert calc.spin_for(_water()) == 0
    assert np.isfinite(label(molecule("OH"), **FAST).info[REF_ENERGY])


def test_unconverged_scf_raises_and_is_never_a_label():
    atoms = _water()
    atoms.calc = PySCFLabeler(**FAST, max_cycle=2)
    with pytest.raises(SCFNotConverged, match=r"hf/sto-3g.*max_cycle=2"):
        atoms.get_potential_energy()
    assert "energy" not in atoms.calc.results


def test_label_many_records_failure_and_goes_on():
    # With two cycles H2/STO-3G converges (its orbital is fixed by symmetry), water does not.
    frames = [molecule("H2"), _water(), molecule("H2")]
    results = label_many(frames, **FAST, max_cycle=2, workers=1, progress=False)
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].atoms is None and "SCFNotConverged" in results[1].error
    assert results[0].atoms.info[REF_ENERGY] == pytest.approx(results[2].atoms.info[REF_ENERGY])


def test_label_many_raises_setup_error_before_work():
    with pytest.raises(SetupError):
        label_many([_water(), Atoms("H")], **FAST, spin=0, workers=1, progress=False)
    with pytest.raises(SetupError):
        label_many([_water()], **FAST, workers=0, progress=False)
    with pytest.raises(SetupError):
        label_many([_water()], method="pbe", progress=False)
    assert label_many([], **FAST, progress=False) == []


def test_label_many_process_pool_matches_serial_in_input_order():
    frames = [_water(s) for s in (0.0, 0.03, -0.03, 0.06)]
    serial = label_many(frames, **FAST, workers=1, progress=False)
    seen: list[LabelResult] = []
    pooled = label_many(frames, **FAST, workers=2, progress=True, on_result=seen.append)

    assert [r.index for r in pooled] == list(range(len(frames)))
    assert all(r.ok for r in pooled)
    assert sorted(r.index for r in seen) == list(range(len(frames)))
    for a, b in zip(serial, pooled):
        assert a.atoms.info[REF_ENERGY] == pytest.approx(b.atoms.info[REF_ENERGY], abs=1e-6)
        np.testing.assert_allclose(a.atoms.arrays[REF_FORCES], b.atoms.arrays[REF_FORCES], atol=1e-5)
    assert len({round(r.atoms.info[REF_ENERGY], 4) for r in pooled}) == 3  # ±0.03 are mirror images


def test_label_many_with_dask_client_matches_serial():
    distributed = pytest.importorskip("distributed")
    frames = [_water(s) for s in (0.0, 0.04)]
    serial = label_many(frames, **FAST, workers=1, progress=False)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        seen = []
        remote = label_many(frames, **FAST, client=client, progress=False, on_result=seen.append)
    assert len(seen) == len(frames)
    for a, b in zip(serial, remote):
        assert b.ok and b.index == a.index
        assert a.atoms.info[REF_ENERGY] == pytest.approx(b.atoms.info[REF_ENERGY], abs=1e-6)


def test_isolated_hydrogen_atom_is_analytic_uhf_sto3g():
    energies = isolated_atom_energies(["H", "H"], "hf/sto-3g", density_fit=False)
    assert list(energies) == ["H"]
    assert energies["H"] == pytest.approx(-0.466581850 * Hartree, abs=1e-4)


def test_isolated_atom_energies_rejects_elements_beyond_table():
    assert GROUND_STATE_SPIN[6] == 2 and GROUND_STATE_SPIN[8] == 2 and len(GROUND_STATE_SPIN) == 18
    with pytest.raises(SetupError):
        isolated_atom_energies(["K"], "hf/sto-3g")
    with pytest.raises(SetupError):
        isolated_atom_energies(["Xx"], "hf/sto-3g")


@pytest.mark.integration
def test_reproduces_published_ethanol_label_at_pbe_def2svp():
    published = read_structures(DATA / "train.xyz")[0]
    out = label(published, method="pbe/def2-svp", density_fit=True)
    d_energy = out.info[REF_ENERGY] - reference_energy(published)
    force_mae = np.mean(np.abs(out.arrays[REF_FORCES] - reference_forces(published)))
    assert abs(d_energy) < 5e-3  # eV
    assert force_mae < 2e-3  # eV/Å
    assert out.info["config_type"] == published.info["config_type"]
