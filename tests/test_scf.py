"""Tests of loops.scf (fallbacks, stability analysis, broken-symmetry UKS) with real PySCF.

Fast tests use H2, water and OH at STO-3G; the three ethanol O–H stretch points of
``data/ethanol/test_H_removal.xyz`` at PBE/def2-SVP are integration tests (minutes each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from loops.errors import SCFNotConverged, SetupError
from loops.labelers import PySCFLabeler, label
from loops.scf import broken_symmetry_guess, fragment_guess, fragments, run_scf
from loops.store import LabelStore
from oed.io import read_structures, structure_hash

DATA = Path(__file__).parent.parent / "data" / "ethanol"
FAST = {"method": "hf/sto-3g", "density_fit": False}


def _mol(atom: str, basis: str = "sto-3g", spin: int = 0):
    from pyscf import gto

    return gto.M(atom=atom, basis=basis, spin=spin, verbose=0)


def test_broken_symmetry_guess_is_orthonormal_and_spin_polarised():
    from pyscf import scf

    mol = _mol("H 0 0 0; H 0 0 2.5")
    mf = scf.RHF(mol).run()
    (ca, cb), (oa, ob) = broken_symmetry_guess(mf.mo_coeff, mf.mo_occ, 45.0)
    s = mol.intor("int1e_ovlp")
    np.testing.assert_allclose(ca.T @ s @ ca, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(cb.T @ s @ cb, np.eye(2), atol=1e-10)
    assert oa.tolist() == ob.tolist() == [1.0, 0.0]
    # α sits on one atom, β on the other: a spin density of ±1 on the two H atoms
    spin_density = np.outer(ca[:, 0], ca[:, 0]) - np.outer(cb[:, 0], cb[:, 0])
    populations = np.einsum("ij,ji->i", spin_density, s)
    assert abs(populations[0]) > 0.9 and populations[0] == pytest.approx(-populations[1], abs=1e-10)
    with pytest.raises(SetupError):
        broken_symmetry_guess(mf.mo_coeff, np.array([2.0, 2.0]))


def test_stretched_h2_goes_broken_symmetry_and_dissociates_to_two_atoms():
    # At 4 Å RHF/RKS is far above two H atoms; the broken-symmetry UKS singlet is
    # two opposite-spin atoms, ⟨S²⟩ = 1, and its energy twice the free atom's.
    stretched = run_scf(_mol("H 0 0 0; H 0 0 4.0"), "pbe", density_fit=False, stability="always")
    atom = run_scf(_mol("H 0 0 0", spin=1), "pbe", density_fit=False)
    assert stretched.route == "rks>uks-bs"
    assert stretched.stable is True
    assert stretched.s2 == pytest.approx(1.0, abs=0.02)
    assert stretched.rks_energy - stretched.energy > 0.05  # Ha: the restricted error of a broken bond
    assert stretched.energy == pytest.approx(2 * atom.energy, abs=1e-4)
    assert atom.route == "uks" and atom.s2 == pytest.approx(0.75, abs=1e-3)


def test_equilibrium_h2_stays_restricted_and_stable():
    result = run_scf(_mol("H 0 0 0; H 0 0 0.74"), "pbe", density_fit=False, stability="always")
    assert (result.route, result.fallback, result.s2, result.stable) == ("rks", "none", 0.0, True)
    assert result.gap > 0.5  # Ha
    assert result.gradient.shape == (2, 3)
    skipped = run_scf(_mol("H 0 0 0; H 0 0 0.74"), "pbe", density_fit=False, stability="auto")
    assert skipped.stable is None and skipped.energy == pytest.approx(result.energy, abs=1e-9)


def test_forced_failure_lists_every_route_tried():
    atoms = molecule("H2O")
    atoms.calc = PySCFLabeler(**FAST, max_cycle=1)
    with pytest.raises(SCFNotConverged) as info:
        atoms.get_potential_energy()
    message = str(info.value)
    for step in ("rhf/none", "rhf-failed>uhf-bs/none", "rhf-failed>uhf-bs/newton", "rhf/level_shift",
                 "rhf/damping", "rhf/newton"):
        assert step + ": not converged" in message
    assert "max_cycle=1" in message
    assert "energy" not in atoms.calc.results and atoms.calc.scf is None


def test_wall_time_limit_is_a_recorded_failure():
    with pytest.raises(SCFNotConverged, match="wall-time limit"):
        run_scf(_mol("H 0 0 0; H 0 0 4.0"), "pbe", density_fit=False, stability="always", time_limit=1e-9)


@pytest.mark.parametrize("bad", [{"stability": "sometimes"}, {"auto_gap": 0}, {"level_shift": -0.1},
                                 {"damping": 1.5}, {"time_limit": 0}, {"max_stability_rounds": -1}])
def test_bad_scf_settings_raise_setup_error(bad):
    with pytest.raises(SetupError):
        PySCFLabeler(**bad)


def test_label_carries_route_fallback_and_s2_into_the_store(tmp_path):
    closed = label(molecule("H2O"), **FAST)
    radical = label(molecule("OH"), **FAST)
    assert (closed.info["scf_route"], closed.info["scf_fallback"], closed.info["s2"]) == ("rhf", "none", 0.0)
    assert radical.info["scf_route"] == "uhf" and radical.info["s2"] == pytest.approx(0.75, abs=0.01)
    store = LabelStore(tmp_path / "labels.db", "hf/sto-3g")
    for i, atoms in enumerate((closed, radical)):
        store.add(structure_hash(atoms), atoms=atoms, pool_index=i, round=0, seconds=1.0)
    from ase.db import connect

    rows = {row.pool_index: row for row in connect(str(tmp_path / "labels.db")).select()}
    assert rows[0].scf_route == "rhf" and rows[1].scf_route == "uhf"
    assert rows[1].s2 == pytest.approx(radical.info["s2"]) and rows[1].scf_fallback == "none"


def _h_removal(oh_dist: float) -> Atoms:
    frames = read_structures(DATA / "test_H_removal.xyz")
    return min(frames, key=lambda a: abs(a.info["OH_dist"] - oh_dist))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("oh_dist", "routes", "s2_range", "max_cycle"),
    [
        (0.975, {"rks"}, (0.0, 0.0), 100),  # closed shell near equilibrium: stability skipped (gap 6.6 eV)
        # RKS unstable towards UKS; σ(O–H) is HOMO−1, not HOMO. Fewer cycles per attempt keep the test
        # short (measured: 30 converge both solutions, 42 s; 100 took 87 s under load)
        (2.075, {"rks>uks-bs"}, (0.4, 1.1), 30),
        # two radicals; whether RKS converges depends on the cycles allowed (with 50 it needed Newton, 195 s
        # under load; with 20 it reached the broken-symmetry UKS at 1 meV from the published label in 74 s)
        (2.575, {"rks>uks-bs", "rks-failed>uks-bs"}, (0.8, 1.1), 20),
    ],
)
def test_ethanol_oh_stretch_matches_published_labels(oh_dist, routes, s2_range, max_cycle):
    published = _h_removal(oh_dist)
    out = label(published, method="pbe/def2-svp", density_fit=True, max_cycle=max_cycle)
    d_energy = out.info["REF_energy"] - published.get_potential_energy()
    assert out.info["scf_route"] in routes
    assert s2_range[0] - 1e-6 <= out.info["s2"] <= s2_range[1] + 1e-6
    assert abs(d_energy) < 0.020  # eV, the goal of the bond-breaking benchmark
    assert np.all(np.isfinite(out.arrays["REF_forces"]))
    assert -4215 < out.info["REF_energy"] < -4200


def test_aufbau_gap_is_per_spin_channel():
    """A UKS solution is rejected as an excited state by its worse spin channel (loops.scf._gap)."""
    from types import SimpleNamespace

    from loops.scf import _gap

    occ = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    ground = SimpleNamespace(mo_occ=occ, mo_energy=np.array([[-1.0, -0.5, 0.1, 0.3], [-1.0, -0.2, 0.2, 0.4]]))
    # alpha occupies orbital 3 above the empty orbital 2: across both channels it would look fine
    excited = SimpleNamespace(mo_occ=np.array([[1, 0, 0, 1], [1, 0, 0, 0]]),
                              mo_energy=np.array([[-1.0, -0.5, 0.1, 0.3], [-1.0, -0.2, 0.2, 0.4]]))
    assert _gap(ground) == pytest.approx(0.6)  # alpha 0.6, beta 0.8 Ha
    assert _gap(excited) == pytest.approx(-0.8)  # alpha: 0.3 occupied above −0.5 empty
    atom = SimpleNamespace(mo_occ=np.array([[1, 0], [0, 0]]), mo_energy=np.array([[-0.5, 0.2], [-0.4, 0.3]]))
    assert _gap(atom) == pytest.approx(0.7)  # an empty beta channel has no gap
    closed = SimpleNamespace(mo_occ=np.array([2, 2, 0]), mo_energy=np.array([-1.0, -0.3, 0.2]))
    assert _gap(closed) == pytest.approx(0.5)


def test_fragment_guess_puts_opposite_spins_on_the_fragments():
    from pyscf import dft

    mol = _mol("H 0 0 0; H 0 0 5.0", basis="def2-svp")
    assert fragments(mol) == [[0], [1]]
    assert fragments(_mol("H 0 0 0; H 0 0 0.74")) == [[0, 1]]
    (dm_a, dm_b), why = fragment_guess(mol, "pbe", density_fit=False)
    assert why == "2 fragments: H 2S=1 (none), H 2S=1 (none)"
    s = mol.intor("int1e_ovlp")
    first = slice(*mol.aoslice_by_atom()[0, 2:4])
    # one α electron on the first atom, one β on the second, nothing in between
    assert np.trace(dm_a[first, first] @ s[first, first]) == pytest.approx(1.0, abs=1e-8)
    assert np.trace(dm_b[first, first] @ s[first, first]) == pytest.approx(0.0, abs=1e-8)
    assert np.trace(dm_b @ s) == pytest.approx(1.0, abs=1e-8)
    # the guess is the converged dissociation limit: UKS from it takes a few cycles to twice the atom
    mf = dft.UKS(mol)
    mf.xc, mf.verbose = "pbe", 0
    mf.kernel(dm0=np.asarray((dm_a, dm_b)))
    atom = run_scf(_mol("H 0 0 0", basis="def2-svp", spin=1), "pbe", density_fit=False)
    assert mf.converged and mf.cycles <= 8
    assert mf.e_tot == pytest.approx(2 * atom.energy, abs=1e-5)
    for atom_str, spin, reason in [("H 0 0 0; H 0 0 0.74", 0, "one fragment"),
                                   ("He 0 0 0; He 0 0 6", 0, "2 fragments, none with an odd electron count"),
                                   ("H 0 0 0; H 0 0 5; H 0 0 10", 1, "neutral closed-shell")]:
        guess, why = fragment_guess(_mol(atom_str, spin=spin), "pbe", density_fit=False)
        assert guess is None and reason in why


def test_fragment_guess_takes_over_when_the_broken_symmetry_uks_does_not_converge():
    # Measured: H2 at 5 Å in STO-3G with 2 cycles per attempt. RKS converges and is unstable towards
    # UKS; the mixed σ/σ* guess does not converge in 2 cycles along any fallback; the fragment guess
    # (two H atoms, α and β) does, to the energy of two atoms. The same fallback labels ethanol at
    # O–H 6.575 Å within 1 meV of the published label (benchmarks/outputs/bond_breaking.md).
    result = run_scf(_mol("H 0 0 0; H 0 0 5.0"), "pbe", density_fit=False, stability="always", max_cycle=2)
    atom = run_scf(_mol("H 0 0 0", spin=1), "pbe", density_fit=False)
    assert result.route == "rks>uks-frag"
    assert "rks>uks-bs/newton: not converged in uncounted cycles" in result.steps
    assert result.s2 == pytest.approx(1.0, abs=1e-3) and result.stable is True
    assert result.energy == pytest.approx(2 * atom.energy, abs=1e-5)  # Ha; at 5 Å the atoms still feel 1e-6


def test_rks_stability_with_an_empty_start_space_still_reaches_broken_symmetry():
    # Measured: H2 at 8 Å in STO-3G, σg and σu degenerate: PySCF's external stability Davidson raised
    # LinearDependencyError out of the labeller. Now the broken-symmetry UKS is tried from HOMO/LUMO.
    result = run_scf(_mol("H 0 0 0; H 0 0 8.0"), "pbe", density_fit=False, stability="always", max_cycle=3)
    atom = run_scf(_mol("H 0 0 0", spin=1), "pbe", density_fit=False)
    assert "rks stability: no start space for the analysis; broken symmetry tried" in result.steps
    assert result.route == "rks>uks-bs" and result.s2 == pytest.approx(1.0, abs=1e-3)
    assert result.energy == pytest.approx(2 * atom.energy, abs=1e-6)
