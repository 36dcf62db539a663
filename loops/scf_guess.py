"""Initial guesses for an unrestricted SCF: the mixed HOMO/LUMO broken-symmetry guess and the fragment guess.

Pure PySCF and NumPy, Hartree and Bohr; used by :func:`loops.scf.run_scf`.
"""

from __future__ import annotations

import re
import time

import numpy as np

from loops.errors import SetupError

__all__ = ["broken_symmetry_guess", "fragment_guess", "fragments"]

# Two atoms are bonded (same fragment) within this multiple of the sum of their covalent radii.
_BOND_SCALE = 1.2


def broken_symmetry_guess(mo_coeff: np.ndarray, mo_occ: np.ndarray, angle: float = 45.0,
                          pair: tuple[int, int] | None = None):
    """α and β orbitals with an occupied and a virtual orbital (HOMO, LUMO) mixed in opposite senses.

    Parameters
    ----------
    mo_coeff : ndarray, shape (n_ao, n_mo)
        Restricted orbitals.
    mo_occ : ndarray, shape (n_mo,)
        Restricted occupations (2 or 0).
    angle : float
        Rotation angle θ in degrees: α HOMO' = cos θ HOMO + sin θ LUMO,
        β HOMO' = cos θ HOMO − sin θ LUMO (LUMOs rotated to stay orthogonal).
    pair : (int, int) or None
        Indices (occupied, virtual) of the two orbitals to mix; ``None``: HOMO and LUMO.

    Returns
    -------
    (mo_a, mo_b), (occ_a, occ_b)
        Unrestricted orbitals and occupations (1 or 0), for ``UKS.make_rdm1``.

    Raises
    ------
    SetupError
        When there is no occupied or no virtual orbital to mix.
    """
    occupied = np.flatnonzero(np.asarray(mo_occ) > 0)
    virtual = np.flatnonzero(np.asarray(mo_occ) == 0)
    if len(occupied) == 0 or len(virtual) == 0:
        raise SetupError("a broken-symmetry guess needs an occupied and a virtual orbital")
    homo, lumo = (occupied[-1], virtual[0]) if pair is None else pair
    if homo not in occupied or lumo not in virtual:
        raise SetupError(f"pair {pair} is not (occupied, virtual) for occupations {np.asarray(mo_occ).tolist()}")
    t = np.deg2rad(angle)
    out = []
    for sign in (+1.0, -1.0):
        c = np.array(mo_coeff, dtype=float, copy=True)
        h, l_ = mo_coeff[:, homo], mo_coeff[:, lumo]
        c[:, homo] = np.cos(t) * h + sign * np.sin(t) * l_
        c[:, lumo] = -sign * np.sin(t) * h + np.cos(t) * l_
        out.append(c)
    occ = (np.asarray(mo_occ) > 0).astype(float)
    return (out[0], out[1]), (occ, occ.copy())


def fragments(mol, bond_scale: float = _BOND_SCALE) -> list[list[int]]:
    """Atom indices of the covalently connected fragments of ``mol``, in order of their first atom.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        Built molecule (coordinates in Bohr inside PySCF).
    bond_scale : float
        Atoms i, j are bonded when their distance is below ``bond_scale`` × (r_i + r_j),
        r the covalent radii of :data:`ase.data.covalent_radii` (Cordero et al.,
        Dalton Trans. 2008, 2832), Å.

    Returns
    -------
    list of list of int
        One list of atom indices per fragment; one list for a connected molecule.
    """
    from ase.data import atomic_numbers, covalent_radii
    from ase.units import Bohr
    from scipy.sparse.csgraph import connected_components

    xyz = np.asarray(mol.atom_coords()) * Bohr  # Å
    # by element, not mol.atom_charges(): with an ECP those are the valence charges
    # a ghost atom ("GHOST-H", "X-H") by its element: it has no electrons but sits where it sits
    r = covalent_radii[[atomic_numbers[re.sub(r"(?i)^(ghost|x)-", "", mol.atom_pure_symbol(i))]
                        for i in range(mol.natm)]]
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    n, comp = connected_components(d < bond_scale * (r[:, None] + r[None]), directed=False)
    groups = [np.flatnonzero(comp == c).tolist() for c in range(n)]
    return sorted(groups, key=lambda g: g[0])


def fragment_guess(mol, xc: str, *, density_fit: bool = True, conv_tol: float = 1e-6, max_cycle: int = 100,
                   level_shift: float = 0.3, damping: float = 0.5, damping_cycles: int = 20,
                   time_limit: float = 600.0, bond_scale: float = _BOND_SCALE):
    """Broken-symmetry UKS guess density from the separate SCFs of the fragments of a neutral closed shell.

    Each fragment (see :func:`fragments`) is solved on its own as a neutral UKS
    (2S = its electron count mod 2: a doublet or a singlet, so an even-electron
    fragment such as O or O2 is not given its triplet) with the same functional
    and basis, along the fallback chain; its α and β densities fill its diagonal
    AO blocks. The unpaired electrons of successive odd-electron fragments
    alternate α, β, so the guess has S_z = 0: the spin-coupled dissociation limit
    of a homolytic bond breaking (Noodleman, J. Chem. Phys. 74, 5737, 1981).

    Parameters
    ----------
    mol : pyscf.gto.Mole
        Built molecule with ``charge == 0`` and ``spin == 0``, no ghost atoms.
    xc : str
        libxc functional, or ``"hf"``.
    density_fit, conv_tol, max_cycle, level_shift, damping, damping_cycles
        Settings of each fragment's SCF (as :func:`loops.scf.run_scf`; Hartree, cycles).
    time_limit : float
        Seconds for all the fragment SCFs together.
    bond_scale : float
        Bond criterion of :func:`fragments`.

    Returns
    -------
    guess : tuple (dm_a, dm_b) or None
        The α and β density matrices, each of shape (n_ao, n_ao); ``None`` when the
        guess does not apply (one fragment, no odd-electron fragment, a charged or
        open-shell molecule, ghost atoms) or a fragment SCF failed or ran out of time.
    description : str
        The fragments and their SCF fallbacks, or why there is no guess.
    """
    guess, why, _ = _fragment_guess(mol, xc, density_fit, conv_tol, max_cycle, level_shift, damping,
                                    damping_cycles, time_limit, bond_scale)
    return guess, why


def _fragment_guess(mol, xc, density_fit, conv_tol, max_cycle, level_shift, damping, damping_cycles,
                    time_limit, bond_scale):
    """:func:`fragment_guess`, plus the SCF cycles the fragments took."""
    if mol.charge != 0 or mol.spin != 0:
        return None, "fragment guess needs a neutral closed-shell molecule", 0
    if np.any(np.asarray(mol.atom_charges()) == 0):
        return None, "fragment guess with ghost atoms", 0
    from ase.formula import Formula
    from pyscf import gto

    # each fragment goes along the same fallback chain as the molecule's own SCF
    from loops.errors import SCFNotConverged
    from loops.scf import _Route

    groups = fragments(mol, bond_scale)
    if len(groups) < 2:
        return None, "one fragment", 0
    charges = np.asarray(mol.atom_charges(), dtype=int)  # explicit electrons of a neutral atom (ECP cores left out)
    odd = [int(charges[g].sum()) % 2 for g in groups]
    if not any(odd):
        return None, f"{len(groups)} fragments, none with an odd electron count", 0
    aoslices = mol.aoslice_by_atom()
    nao = mol.nao_nr()
    dm_a, dm_b = np.zeros((nao, nao)), np.zeros((nao, nao))
    start, sign, parts, cycles = time.perf_counter(), +1, [], 0
    for atoms, unpaired in zip(groups, odd):
        frag = gto.M(atom=[(mol.atom_symbol(i), mol.atom_coord(i)) for i in atoms], unit="Bohr",
                     basis=mol.basis, ecp=mol.ecp, cart=mol.cart, charge=0, spin=unpaired, verbose=0)
        idx = np.concatenate([np.arange(aoslices[i, 2], aoslices[i, 3]) for i in atoms])
        if frag.nao_nr() != idx.size:
            return None, f"fragment {atoms} has {frag.nao_nr()} AOs, {idx.size} in the molecule", cycles
        left = time_limit - (time.perf_counter() - start)
        sub = _Route(frag, xc, density_fit, conv_tol, max_cycle, level_shift, damping, damping_cycles, max(left, 0.0))
        try:
            mf, fallback, _ = sub.solve(True, None, "frag")
        except SCFNotConverged:  # the fragments' share of the wall time is spent
            return None, f"fragment SCFs took longer than {time_limit:.0f} s", cycles + sub.total_cycles
        cycles += sub.total_cycles
        if mf is None:
            return None, f"fragment {atoms} SCF not converged (" + "; ".join(sub.steps) + ")", cycles
        a, b = mf.make_rdm1()
        if unpaired and sign < 0:
            a, b = b, a
        sign = -sign if unpaired else sign
        dm_a[np.ix_(idx, idx)], dm_b[np.ix_(idx, idx)] = a, b
        formula = Formula.from_list([mol.atom_pure_symbol(i) for i in atoms]).format("hill")
        parts.append(f"{formula} 2S={unpaired} ({fallback})")
    return (dm_a, dm_b), f"{len(groups)} fragments: " + ", ".join(parts), cycles
