"""A robust SCF route for one molecular label: fallbacks, stability analysis, broken-symmetry UKS.

Pure PySCF, Hartree and Bohr throughout; :mod:`loops.labelers` converts to ASE
units. :func:`run_scf` returns a converged SCF energy and nuclear gradient with
the route that produced them, or raises :class:`~loops.errors.SCFNotConverged`
naming every step it tried: an unconverged SCF is never a result.

The route
---------
1. **Fallback chain** for every SCF solve: DIIS (PySCF's default) → level
   shift (virtual orbitals raised by ``level_shift`` Ha during the iterations;
   the converged solution is unchanged) → damping (Fock mixing
   ``damping`` for the first ``damping_cycles`` cycles, then DIIS) → second
   order (``mf.newton()``, augmented-Hessian Newton–Raphson). Each attempt
   starts from the same guess and has ``max_cycle`` cycles.
2. **Closed shell** (2S = 0): RKS. Where it converges, wave-function
   stability analysis (``mf.stability(internal=True, external=True)``; the
   "external" RKS → UKS instability is the one of homolytic bond breaking).
   An internal instability re-optimises RKS along the unstable direction. An
   external one leads to a **broken-symmetry UKS** from a mixed guess: the
   occupied and virtual RKS orbitals that the instability mixes most (σ and σ*
   of the breaking bond; often, not always, HOMO and LUMO) rotated by +θ for α
   and −θ for β (θ = 45°), after Noodleman, J. Chem. Phys. 74, 5737 (1981).
   When no RKS fallback converges (a converged RKS with its HOMO more than
   0.01 Ha above its LUMO counts as failed: an excited state), the HOMO and
   LUMO of the plain DIIS run's last orbitals are mixed instead (route
   ``rks-failed>uks-bs``). The UKS is itself stability-checked
   (internal) and re-optimised along an unstable direction until stable, at
   most ``max_stability_rounds`` times. The lower-energy converged solution is
   taken, preferring a stable one; a UKS that comes back spin-restricted
   (⟨S²⟩ < 0.01 and the RKS energy) is reported as the RKS route.
   When that broken-symmetry UKS does not converge either and the molecule
   falls apart into neutral fragments, some with an odd electron count (a
   homolytic dissociation product, e.g. ethoxy + H), the UKS starts instead
   from the **fragment guess**: each fragment's own UKS density (doublet or
   singlet, same functional and basis) on the diagonal blocks, the unpaired
   spins of successive odd fragments alternating α, β (route suffix ``-frag``).
   Where PySCF's RKS stability analysis cannot start (an empty Davidson start
   space, as for H2 at 8 Å in STO-3G), the broken-symmetry UKS is tried from
   HOMO/LUMO and the lower converged solution kept.
3. **Open shell**: UKS with the fallback chain, then the same UKS stability loop.

``stability="auto"`` skips the analysis of a closed-shell RKS solution that DIIS
converged and whose HOMO–LUMO gap is at least ``auto_gap`` (default 0.1 Ha =
2.72 eV). Measured on the ethanol O–H stretch (``data/ethanol/test_H_removal.xyz``,
``benchmarks/outputs/bond_breaking.md``): RKS is stable at 1.675 Å (gap 1.86 eV)
and unstable towards UKS from 1.875 Å (gap 1.14 eV) on; at 0.975 Å the gap is
6.57 eV. The default is 2.4 times the largest gap of an unstable RKS seen there;
the analysis (internal + external, one root each) costs about four times the
SCF and gradient of a label at 0.975 Å.

The wall-time limit ``time_limit`` is checked between steps (before each SCF
attempt, stability analysis and gradient): it does not interrupt a running
PySCF kernel, so one step may overrun it by that step's length.

References
----------
R. Seeger and J. A. Pople, "Self-consistent molecular orbital methods. XVIII.
Constraints and stability in Hartree–Fock theory", J. Chem. Phys. 66, 3045 (1977).
L. Noodleman, "Valence bond description of antiferromagnetic coupling in
transition metal dimers", J. Chem. Phys. 74, 5737 (1981).
Q. Sun et al., J. Chem. Phys. 153, 024109 (2020) (PySCF, incl. ``stability`` and ``newton``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pyscf.lib.exceptions import LinearDependencyError

from loops.errors import SCFNotConverged, SetupError
from loops.scf_guess import _BOND_SCALE, _fragment_guess, broken_symmetry_guess, fragment_guess, fragments

__all__ = ["FALLBACKS", "STABILITY_MODES", "SCFResult", "broken_symmetry_guess", "fragment_guess", "fragments",
           "run_scf"]

#: SCF strategies in the order they are tried; "none" is plain DIIS.
FALLBACKS = ("none", "level_shift", "damping", "newton")
STABILITY_MODES = ("auto", "always", "never")

# An eigenvalue of the orbital Hessian below PySCF's own -1e-5 counts as unstable;
# a UKS solution within this of ⟨S²⟩ = 0 and of the RKS energy is the RKS one.
_RESTRICTED_S2 = 1e-2
_SAME_ENERGY = 1e-6  # Ha
# A solution whose HOMO lies this far above its LUMO (in either spin channel) is an excited state.
_AUFBAU_TOL = 0.01  # Ha


@dataclass(frozen=True)
class SCFResult:
    """A converged SCF solution and how it was reached.

    Attributes
    ----------
    energy : float
        Total energy, Hartree.
    gradient : ndarray, shape (n_atoms, 3)
        Nuclear gradient dE/dR, Hartree/Bohr.
    route : str
        ``"rks"``, ``"uks"`` (open shell), ``"rks>uks-bs"`` (RKS unstable towards
        UKS, broken-symmetry UKS taken) or ``"rks-failed>uks-bs"`` (no RKS
        fallback converged; broken-symmetry UKS from HOMO/LUMO taken); with ``-frag``
        instead of ``-bs`` the UKS started from the fragment guess
        (:func:`loops.scf_guess.fragment_guess`) because the mixed-orbital one did not
        converge. Hartree–Fock uses ``rhf``/``uhf`` in the same places.
    fallback : str
        The member of :data:`FALLBACKS` that converged the accepted solution.
    s2 : float
        ⟨S²⟩ of the accepted determinant (0 for RKS; ≈ 1 for a broken-symmetry
        singlet of two radicals; 0.75 for a doublet).
    stable : bool or None
        Result of the last stability analysis of the accepted solution; ``None``
        when none was run (``stability="never"``, or ``"auto"`` with a large gap).
    cycles : int
        SCF cycles of the accepted solution's final solve (0 for Newton, whose
        PySCF kernel does not count them).
    total_cycles : int
        SCF cycles of every solve, failed ones included (Newton's uncounted).
    gap : float or None
        HOMO–LUMO gap of the converged RKS solution, Hartree (``None`` without one).
    rks_energy : float or None
        Energy of the converged RKS solution, Hartree, for comparison (``None``
        for an open shell or where no RKS converged).
    rks_fallback : str or None
        The fallback that converged that RKS (``"none"``: plain DIIS).
    seconds : float
        Wall time of the whole route.
    steps : tuple of str
        What was done, in order (e.g. ``"rks/none: converged in 12"``).
    """

    energy: float
    gradient: np.ndarray
    route: str
    fallback: str
    s2: float
    stable: bool | None
    cycles: int
    total_cycles: int
    gap: float | None
    rks_energy: float | None
    rks_fallback: str | None
    seconds: float
    steps: tuple[str, ...] = field(default=())


class _Route:
    """State of one run_scf call: settings, steps taken, the clock."""

    def __init__(self, mol, xc, density_fit, conv_tol, max_cycle, level_shift, damping, damping_cycles,
                 time_limit):
        self.mol, self.xc, self.density_fit = mol, xc, density_fit
        self.conv_tol, self.max_cycle = conv_tol, max_cycle
        self.level_shift, self.damping, self.damping_cycles = level_shift, damping, damping_cycles
        self.time_limit = time_limit
        self.start = time.perf_counter()
        self.steps: list[str] = []
        self.total_cycles = 0
        self.rks_fallback: str | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check_clock(self, before: str) -> None:
        if self.elapsed() > self.time_limit:
            self.steps.append(f"wall-time limit {self.time_limit:g} s reached before {before}")
            raise SCFNotConverged(self.failure("wall-time limit exceeded"))

    def failure(self, why: str) -> str:
        return (f"{why} for {self.mol.atom_charges().size}-atom molecule at {self.xc} after "
                f"{self.elapsed():.0f} s; route tried: " + " > ".join(self.steps))

    def mean_field(self, unrestricted: bool):
        from pyscf import dft, scf

        if self.xc == "hf":
            mf = scf.UHF(self.mol) if unrestricted else scf.RHF(self.mol)
        else:
            mf = dft.UKS(self.mol) if unrestricted else dft.RKS(self.mol)
            mf.xc = self.xc
        if self.density_fit:
            mf = mf.density_fit()
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        return mf

    def name(self, unrestricted: bool) -> str:
        base = "hf" if self.xc == "hf" else "ks"
        return ("u" if unrestricted else "r") + base

    def solve(self, unrestricted: bool, dm0, label: str, fallbacks=FALLBACKS):
        """First converged solution along ``fallbacks``: (plain mf, fallback) or (None, last mf)."""
        last = None
        for fallback in fallbacks:
            self.check_clock(f"{label}/{fallback}")
            mf = self.mean_field(unrestricted)
            if fallback == "level_shift":
                mf.level_shift = self.level_shift
            elif fallback == "damping":
                # PySCF damps only before DIIS starts (cycle < diis_start_cycle - 1).
                mf.damp = self.damping
                mf.diis_start_cycle = self.damping_cycles + 1
            elif fallback == "newton":
                mf = mf.newton()
                mf.max_cycle = self.max_cycle
            mf.kernel(dm0=dm0)
            # PySCF's Newton kernel does not count its cycles (mf.cycles stays 0)
            cycles = 0 if fallback == "newton" else int(getattr(mf, "cycles", self.max_cycle))
            self.total_cycles += cycles
            done = "uncounted cycles" if fallback == "newton" else f"{cycles}"
            if mf.converged:
                plain = self.plain_copy(mf, unrestricted)
                if _gap(plain) > -_AUFBAU_TOL:
                    self.steps.append(f"{label}/{fallback}: converged in {done}")
                    return plain, fallback, cycles
                # Measured: at O–H 6.575 Å in ethanol Newton converges RKS to a state with the
                # HOMO 13 eV above the LUMO, 10.8 eV above the right energy, and the broken-symmetry
                # UKS to one with ⟨S²⟩ 1.57, 7.25 eV above it; stability analysis calls both stable.
                # A solution with an occupied orbital above a virtual one of its spin is no ground
                # state: go on (and fail, recorded, if nothing else converges).
                self.steps.append(f"{label}/{fallback}: converged in {done} to a non-aufbau state "
                                  f"(HOMO–LUMO gap {_gap(plain):.3f} Ha), rejected")
            else:
                self.steps.append(f"{label}/{fallback}: not converged in {done}")
            last = mf if last is None else last  # the first (plain DIIS) iterate guides a later guess
        return None, last, 0

    def plain_copy(self, mf, unrestricted: bool):
        """A plain (no shift, no damping, no Newton wrapper) converged object with canonical orbitals.

        Gradients and stability analysis then see the bare functional, whatever converged it.
        """
        plain = self.mean_field(unrestricted)
        mo_energy, mo_coeff = plain.canonicalize(mf.mo_coeff, mf.mo_occ)
        plain.mo_energy, plain.mo_coeff, plain.mo_occ = mo_energy, mo_coeff, mf.mo_occ
        plain.e_tot, plain.converged = float(mf.e_tot), True
        return plain


def _fragment_uks(route: "_Route", label: str, max_rounds: int, check: bool):
    """UKS from the fragment guess, as :func:`_uks_until_stable`; None when it does not apply or fails."""
    # the fragments get at most half of the time left, so that the UKS from their guess has the rest
    left = 0.5 * max(route.time_limit - route.elapsed(), 0.0)
    dm0, why, cycles = _fragment_guess(route.mol, route.xc, route.density_fit, 1e-6, route.max_cycle,
                                       route.level_shift, route.damping, route.damping_cycles, left, _BOND_SCALE)
    route.total_cycles += cycles
    route.steps.append(f"{label} guess: {why}")
    if dm0 is None:
        return None
    return _uks_until_stable(route, np.asarray(dm0), label, max_rounds, check)


def _instability_pair(rks, mo_unstable) -> tuple[int, int]:
    """(occupied, virtual) RKS orbital indices that the external instability mixes most.

    PySCF's ``stability(external=True)`` returns α orbitals rotated along the lowest
    RKS → UKS eigenvector; the largest virtual–occupied element of that rotation,
    ``U = C^T S C'``, names the pair. In a bond breaking it is σ/σ*, which need not be
    HOMO/LUMO: in ethanol at O–H 2.075 Å the HOMO is an O lone pair and σ(O–H) is
    HOMO−1, and mixing HOMO/LUMO converges to a UKS 0.24 eV above the right one.
    """
    s = rks.mol.intor_symmetric("int1e_ovlp")
    u = np.asarray(rks.mo_coeff).T @ s @ np.asarray(mo_unstable)
    occupied = np.flatnonzero(np.asarray(rks.mo_occ) > 0)
    virtual = np.flatnonzero(np.asarray(rks.mo_occ) == 0)
    block = np.abs(u[np.ix_(virtual, occupied)])
    a, i = np.unravel_index(int(np.argmax(block)), block.shape)
    return int(occupied[i]), int(virtual[a])


def _homo_lumo(rks) -> tuple[int, int]:
    occ = np.asarray(rks.mo_occ)
    return int(np.flatnonzero(occ > 0)[-1]), int(np.flatnonzero(occ == 0)[0])


def _gap(mf) -> float:
    """LUMO − HOMO, Ha; for an unrestricted solution the smaller of the two spin channels'
    (a channel without occupied or virtual orbitals has no gap)."""
    occ = np.asarray(mf.mo_occ)
    e = np.asarray(mf.mo_energy)
    if occ.ndim == 1:
        return float(e[occ == 0].min() - e[occ > 0].max())
    gaps = [float(es[os_ == 0].min() - es[os_ > 0].max()) for es, os_ in zip(e, occ)
            if np.any(os_ == 0) and np.any(os_ > 0)]
    return min(gaps) if gaps else np.inf


def _n_rotations(mf) -> int:
    """Occupied × virtual orbital pairs (both spins): the size of the stability problem."""
    occ = np.asarray(mf.mo_occ)
    return int(sum(np.sum(o > 0) * np.sum(o == 0) for o in (occ if occ.ndim == 2 else [occ])))


def _s2(mf) -> float:
    if np.asarray(mf.mo_occ).ndim == 1:  # restricted
        return 0.0
    return float(mf.spin_square()[0])


def _uks_until_stable(route: _Route, dm0, label: str, max_rounds: int, check: bool):
    """Solve UKS from dm0 and re-optimise along an internal instability until stable.

    Returns (mf, fallback, cycles, stable) or None when a solve fails.
    """
    mf, fallback, cycles = route.solve(True, dm0, label)
    if mf is None:
        return None
    if not check:
        return mf, fallback, cycles, None
    if _n_rotations(mf) == 0:  # e.g. a free H atom in a minimal basis: nothing can be unstable
        route.steps.append(f"{label} stability: no orbital rotations")
        return mf, fallback, cycles, True
    stable = False
    for attempt in range(max_rounds + 1):
        route.check_clock(f"{label} stability")
        try:
            mo, _, stable, _ = mf.stability(internal=True, external=False, nroots=1, return_status=True)
        except LinearDependencyError:
            # PySCF's Davidson gets an empty start space (a one-electron atom, whose β channel is
            # empty): no rotation it can build lowers the energy, as with no rotations at all
            route.steps.append(f"{label} stability: no start space (one-electron system), taken as stable")
            return mf, fallback, cycles, True
        route.steps.append(f"{label} stability: {'stable' if stable else 'unstable'}")
        if stable or attempt == max_rounds:
            break
        again = route.solve(True, mf.make_rdm1(mo, mf.mo_occ), f"{label}:reopt{attempt + 1}")
        if again[0] is None:
            break  # keep the converged (unstable) solution we have
        if again[0].e_tot <= mf.e_tot + _SAME_ENERGY:
            mf, fallback, cycles = again
    return mf, fallback, cycles, bool(stable)


def run_scf(
    mol,
    xc: str,
    *,
    density_fit: bool = True,
    conv_tol: float = 1e-9,
    max_cycle: int = 100,
    stability: str = "auto",
    auto_gap: float = 0.1,
    level_shift: float = 0.3,
    damping: float = 0.5,
    damping_cycles: int = 20,
    max_stability_rounds: int = 3,
    bs_angle: float = 45.0,
    time_limit: float = 1800.0,
) -> SCFResult:
    """Converged SCF energy and gradient of ``mol`` by the route in the module docstring.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        Built molecule; ``mol.spin`` (2S) selects closed shell (0) or open shell.
    xc : str
        libxc functional name, or ``"hf"`` for Hartree–Fock.
    density_fit : bool
        Density fitting (RI-J/K) with PySCF's default auxiliary basis.
    conv_tol : float
        SCF energy convergence threshold, Hartree.
    max_cycle : int
        Cycles per SCF attempt (each fallback gets its own).
    stability : {"auto", "always", "never"}
        Stability analysis of the solutions: always; never (then a closed shell
        is plain RKS with fallbacks, and a broken-symmetry UKS is tried only
        when every RKS attempt fails); or "auto": skipped for a closed-shell RKS
        that DIIS converged with a HOMO–LUMO gap ≥ ``auto_gap``.
    auto_gap : float
        Gap threshold of ``"auto"``, Hartree (0.1 Ha = 2.72 eV).
    level_shift : float
        Virtual-orbital shift of the level-shift fallback, Hartree.
    damping : float
        Fraction of the previous Fock matrix mixed in by the damping fallback.
    damping_cycles : int
        Cycles damped before DIIS takes over in the damping fallback.
    max_stability_rounds : int
        Most re-optimisations of a UKS solution found unstable.
    bs_angle : float
        Mixing angle θ of the broken-symmetry guess, degrees.
    time_limit : float
        Wall-time limit of the whole route, seconds, checked between steps (a
        running SCF kernel is not interrupted).

    Returns
    -------
    SCFResult

    Raises
    ------
    SetupError
        Bad ``stability`` or numeric settings.
    SCFNotConverged
        Every route failed, or the wall-time limit was reached; the message
        lists each step tried.
    """
    if stability not in STABILITY_MODES:
        raise SetupError(f"stability must be one of {STABILITY_MODES}, got {stability!r}")
    for name, value in (("auto_gap", auto_gap), ("level_shift", level_shift), ("time_limit", time_limit)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise SetupError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(damping, (int, float)) and 0 < damping < 1):
        raise SetupError(f"damping must be in (0, 1), got {damping!r}")
    route = _Route(mol, xc, density_fit, conv_tol, max_cycle, level_shift, damping, damping_cycles, time_limit)
    check = stability != "never"
    r, u = route.name(False), route.name(True)

    if mol.spin != 0:
        got = _uks_until_stable(route, None, u, max_stability_rounds, check)
        if got is None:
            raise SCFNotConverged(route.failure("SCF not converged"))
        mf, fallback, cycles, stable = got
        return _finish(route, mf, u, fallback, cycles, stable, None, None)

    # Closed shell: RKS along the whole fallback chain first. A broken-symmetry guess
    # needs the pair of orbitals the RKS → UKS instability mixes, which only a
    # converged RKS and its stability analysis give (see _instability_pair).
    rks, fallback, cycles = route.solve(False, None, r)
    if rks is None:
        if not check:
            raise SCFNotConverged(route.failure("SCF not converged"))
        last = fallback  # solve() returns its first failed mf in this slot
        label = f"{r}-failed>{u}-bs"
        dm0 = route.mean_field(True).make_rdm1(*broken_symmetry_guess(last.mo_coeff, last.mo_occ, bs_angle))
        got = _uks_until_stable(route, dm0, label, max_stability_rounds, check)
        if got is None:
            label = f"{r}-failed>{u}-frag"
            got = _fragment_uks(route, label, max_stability_rounds, check)
        if got is None:
            raise SCFNotConverged(route.failure("SCF not converged"))
        mf, fb, cyc, stable = got
        return _finish(route, mf, label, fb, cyc, stable, None, None)
    rks_energy, route.rks_fallback = float(rks.e_tot), fallback

    gap = _gap(rks)
    if not check or (stability == "auto" and fallback == "none" and gap >= auto_gap):
        route.steps.append(f"{r} stability: skipped (gap {gap:.3f} Ha)" if check else f"{r} stability: off")
        return _finish(route, rks, r, fallback, cycles, None, gap, rks_energy)

    stable = False
    for attempt in range(max_stability_rounds + 1):
        route.check_clock(f"{r} stability")
        try:
            mo_i, mo_e, stable_i, stable_e = rks.stability(internal=True, external=True, nroots=1,
                                                           return_status=True)
        except LinearDependencyError:
            # Measured: H2 at 8 Å in STO-3G, where σg and σu are degenerate, PySCF's Davidson
            # gets an empty start space. The analysis says nothing; try the broken-symmetry UKS
            # from HOMO/LUMO and keep the lower converged solution.
            route.steps.append(f"{r} stability: no start space for the analysis; broken symmetry tried")
            mo_e = None
            break
        route.steps.append(f"{r} stability: internal {'stable' if stable_i else 'unstable'}, "
                           f"external {'stable' if stable_e else 'unstable'}")
        if not stable_e:
            break
        stable = bool(stable_i)
        if stable_i or attempt == max_stability_rounds:
            return _finish(route, rks, r, fallback, cycles, stable, _gap(rks), rks_energy)
        again = route.solve(False, rks.make_rdm1(mo_i, rks.mo_occ), f"{r}:reopt{attempt + 1}")
        if again[0] is None or again[0].e_tot > rks.e_tot + _SAME_ENERGY:
            return _finish(route, rks, r, fallback, cycles, False, _gap(rks), rks_energy)
        rks, fallback, cycles = again

    # RKS → UKS instability: broken-symmetry UKS from the mixed guess of the pair it rotates.
    label = f"{r}>{u}-bs"
    pair = _instability_pair(rks, mo_e[0]) if mo_e is not None else _homo_lumo(rks)
    route.steps.append(f"{label} guess: orbitals {pair[0]} (occupied) and {pair[1]} (virtual) mixed")
    dm0 = route.mean_field(True).make_rdm1(*broken_symmetry_guess(rks.mo_coeff, rks.mo_occ, bs_angle, pair))
    got = _uks_until_stable(route, dm0, label, max_stability_rounds, True)
    if got is None:
        label = f"{r}>{u}-frag"
        got = _fragment_uks(route, label, max_stability_rounds, True)
    # The RKS is unstable (False) where the analysis said so; unknown (None) where it could not start.
    rks_stable = False if mo_e is not None else None
    if got is None:  # no converged UKS: the RKS solution is converged (and unstable, or untested)
        return _finish(route, rks, r, fallback, cycles, rks_stable, _gap(rks), rks_energy)
    uks, fb_u, cyc_u, stable_u = got
    restricted = _s2(uks) < _RESTRICTED_S2 and uks.e_tot > rks.e_tot - 10 * _SAME_ENERGY
    if restricted:
        route.steps.append(f"{label}: came back spin-restricted (⟨S²⟩ {_s2(uks):.3f})")
        return _finish(route, rks, r, fallback, cycles, stable_u, _gap(rks), rks_energy)
    # after a shown instability a stable UKS is the answer; untested, only a lower energy says so
    if uks.e_tot < rks.e_tot or (stable_u and mo_e is not None):
        return _finish(route, uks, label, fb_u, cyc_u, stable_u, _gap(rks), rks_energy)
    return _finish(route, rks, r, fallback, cycles, rks_stable, _gap(rks), rks_energy)


def _finish(route: _Route, mf, name, fallback, cycles, stable, gap, rks_energy) -> SCFResult:
    route.check_clock("gradient")
    gradient = np.asarray(mf.nuc_grad_method().kernel(), dtype=float)  # Hartree/Bohr, (n_atoms, 3)
    return SCFResult(
        energy=float(mf.e_tot), gradient=gradient, route=name, fallback=fallback, s2=_s2(mf),
        stable=stable, cycles=int(cycles), total_cycles=route.total_cycles, gap=gap,
        rks_energy=rks_energy, rks_fallback=route.rks_fallback, seconds=route.elapsed(),
        steps=tuple(route.steps),
    )
