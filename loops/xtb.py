"""Cheap reference labels from GFN2-xTB (or GFN1-xTB) through tblite's ASE calculator.

Semi-empirical tight binding costs milliseconds per small molecule where DFT costs seconds,
so the tutorials use it as a **stand-in for DFT**: it gives a smooth, physically sensible
potential-energy surface with energies and analytic forces, not DFT-quality numbers.

:func:`label_many_xtb` has the contract of :func:`loops.labelers.label_many`: one
:class:`~loops.labelers.LabelResult` per configuration in input order, energies in eV under
``info["REF_energy"]``, forces in eV/Å under ``arrays["REF_forces"]``, other ``info`` keys
kept, and a calculation that fails (an SCF that does not converge) recorded as a failed
result, never turned into a label. tblite itself works in Hartree and Bohr; its ASE
calculator converts to eV and eV/Å.

References
----------
C. Bannwarth, S. Ehlert and S. Grimme, "GFN2-xTB — An accurate and broadly parametrized
self-consistent tight-binding quantum chemical method with multipole electrostatics and
density-dependent dispersion contributions", J. Chem. Theory Comput. 15, 1652 (2019).
S. Grimme, C. Bannwarth and P. Shushkov, "A robust and accurate tight-binding quantum
chemical method for structures, vibrational frequencies, and noncovalent interactions of
large molecular systems parametrized for all spd-block elements (Z = 1–86)" (GFN1-xTB),
J. Chem. Theory Comput. 13, 1989 (2017).
tblite: the light-weight tight-binding framework of the Grimme group (LGPL-3.0).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed as ASECalculationFailed
from ase.calculators.calculator import InputError as ASEInputError
from ase.data import atomic_numbers

from loops.errors import CalculationFailed, SCFNotConverged, SetupError
from loops.labelers import GROUND_STATE_SPIN, LabelResult, label_with
from loops.parallel import Executor
from oed.io import REF_ENERGY, REF_FORCES

__all__ = ["XTB_METHODS", "isolated_atom_energies_xtb", "label_many_xtb", "label_xtb", "omp_threads"]

#: Accepted method names (lower case) and tblite's spelling of them.
XTB_METHODS: dict[str, str] = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}
#: GFN1- and GFN2-xTB are parametrised for H..Rn.
_MAX_Z = 86


def _canonical_method(method: str) -> str:
    if not isinstance(method, str) or method.strip().lower() not in XTB_METHODS:
        raise SetupError(f"unknown xTB method {method!r}; choose from {', '.join(XTB_METHODS)}")
    return method.strip().lower()


def _check_settings(method: str, charge, max_iterations) -> str:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(charge):
        raise SetupError(f"charge must be an integer, got {charge!r}")
    if not is_int(max_iterations) or max_iterations < 1:
        raise SetupError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
    return _canonical_method(method)


def _uhf_for(atoms: Atoms, charge: int) -> int:
    """Unpaired electrons: 0 for an even electron count, 1 for an odd one."""
    n_electrons = int(np.sum(atoms.numbers)) - int(charge)
    if n_electrons <= 0:
        raise SetupError(f"{atoms.get_chemical_formula()} with charge {charge} has {n_electrons} electrons")
    return n_electrons % 2


def _check_atoms(atoms: Atoms, charge: int) -> None:
    if len(atoms) == 0:
        raise SetupError("cannot label a configuration with no atoms")
    if np.any(atoms.pbc):
        raise SetupError(
            f"the xTB labeller labels molecules; {atoms.get_chemical_formula()} has pbc={atoms.pbc.tolist()}"
        )
    if np.any(atoms.numbers < 1) or np.any(atoms.numbers > _MAX_Z):
        raise SetupError(f"{atoms.get_chemical_formula()}: GFN-xTB covers elements H..Rn (Z = 1..86)")
    _uhf_for(atoms, charge)


def _calculator(method: str, charge: int, uhf: int, max_iterations: int):
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - tblite is a dependency
        raise SetupError("tblite is not importable; install it with `pip install tblite`") from exc
    return TBLite(
        method=XTB_METHODS[method],
        charge=int(charge),
        multiplicity=int(uhf) + 1,
        max_iterations=int(max_iterations),
        verbosity=0,
    )


def _calculate(atoms: Atoms, method: str, charge: int, max_iterations: int, uhf: int | None = None):
    """Energy (eV) and forces (eV/Å) of ``atoms``; tblite's failures become ours."""
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    work.calc = _calculator(method, charge, _uhf_for(atoms, charge) if uhf is None else uhf, max_iterations)
    formula = atoms.get_chemical_formula()
    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
    except ASECalculationFailed as exc:  # tblite's RuntimeError, wrapped by its calculator
        text = str(exc)
        if "not converged" in text.lower():
            raise SCFNotConverged(
                f"{XTB_METHODS[method]} SCF not converged for {formula} "
                f"(max_iterations={max_iterations}): {text}"
            ) from exc
        raise CalculationFailed(f"{XTB_METHODS[method]} failed for {formula}: {text}") from exc
    except ASEInputError as exc:  # tblite rejected the geometry (e.g. atoms on top of each other)
        raise CalculationFailed(f"{XTB_METHODS[method]} rejected {formula}: {exc}") from exc
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise CalculationFailed(f"{XTB_METHODS[method]} gave a non-finite energy or forces for {formula}")
    return energy, forces


def label_xtb(
    atoms: Atoms,
    *,
    method: str = "gfn2-xtb",
    charge: int = 0,
    max_iterations: int = 250,
    threads: int = 1,
) -> Atoms:
    """Label one molecule with GFN-xTB.

    Parameters
    ----------
    atoms : ase.Atoms
        Molecule (no periodic direction), positions in Å.
    method : {"gfn2-xtb", "gfn1-xtb"}, default "gfn2-xtb"
        Tight-binding Hamiltonian; case-insensitive.
    charge : int, default 0
        Total charge in e. An odd electron count gets one unpaired electron.
    max_iterations : int, default 250
        Most SCC iterations (tblite's default) before the run counts as not converged.
    threads : int, default 1
        OpenMP threads of tblite during the calculation (see :func:`label_many_xtb`).

    Returns
    -------
    ase.Atoms
        A copy with ``info["REF_energy"]`` (eV), ``arrays["REF_forces"]`` of shape
        ``(n_atoms, 3)`` (eV/Å) and ``info["level_of_theory"]`` (``"gfn2-xtb"``). Other
        ``info`` keys are kept; a calculator and plain ``energy``/``forces`` are dropped.

    Raises
    ------
    SetupError
        Unknown method, bad charge or ``max_iterations``, a periodic structure, an element
        beyond Rn, or no electrons.
    SCFNotConverged
        The self-consistent charge iterations did not converge.
    CalculationFailed
        tblite failed otherwise (e.g. rejected the geometry).

    References
    ----------
    Bannwarth, Ehlert & Grimme, J. Chem. Theory Comput. 15, 1652 (2019) (GFN2-xTB).
    """
    method = _check_settings(method, charge, max_iterations)
    _check_atoms(atoms, charge)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise SetupError(f"threads must be an integer >= 1, got {threads!r}")
    with omp_threads(threads):
        return _labelled_copy(atoms, method, charge, max_iterations)


def _labelled_copy(atoms: Atoms, method: str, charge: int, max_iterations: int) -> Atoms:
    energy, forces = _calculate(atoms, method, charge, max_iterations)
    out = atoms.copy()  # keeps info and arrays, not the calculator
    out.calc = None
    out.info.pop("energy", None)
    out.arrays.pop("forces", None)
    out.info[REF_ENERGY] = energy
    out.arrays[REF_FORCES] = forces
    out.info["level_of_theory"] = method
    return out


def isolated_atom_energies_xtb(
    symbols: Iterable[str], *, method: str = "gfn2-xtb"
) -> dict[str, float]:
    """GFN-xTB energies of the free atoms: the E0s of a potential fitted to xTB labels.

    Parameters
    ----------
    symbols : iterable of str
        Element symbols; repeats are computed once.
    method : {"gfn2-xtb", "gfn1-xtb"}, default "gfn2-xtb"

    Returns
    -------
    dict of str to float
        Energy in eV per symbol, in order of first appearance; each atom with the unpaired
        electrons of its ground state (:data:`loops.labelers.GROUND_STATE_SPIN`, H..Ar).
        GFN-xTB is spin-restricted here (no spin-polarisation term), so these are the
        xTB energies of the atoms with those occupations.

    Raises
    ------
    SetupError
        Unknown method or symbol, or an element beyond Ar.
    CalculationFailed
        An atomic calculation failed.
    """
    method = _canonical_method(method)
    energies: dict[str, float] = {}
    with omp_threads(1):
        for symbol in symbols:
            if symbol in energies:
                continue
            z = atomic_numbers.get(symbol)
            if z not in GROUND_STATE_SPIN:
                raise SetupError(
                    f"no ground-state spin for {symbol!r}: isolated_atom_energies_xtb covers H..Ar"
                )
            energies[symbol], _ = _calculate(Atoms(symbol), method, 0, 250, uhf=GROUND_STATE_SPIN[z])
    return energies


def _label_one_xtb(index: int, atoms: Atoms, settings: dict) -> LabelResult:
    # Module level so that spawned worker processes can unpickle it.
    start = time.perf_counter()
    try:
        labelled = _labelled_copy(atoms, **settings)
    except CalculationFailed as exc:  # recorded; SetupError propagates and stops the run
        return LabelResult(index, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    return LabelResult(index, labelled, None, time.perf_counter() - start)


@contextlib.contextmanager
def omp_threads(threads: int):
    """Limit the OpenMP (and BLAS) threads of this process inside a ``with`` block.

    tblite's OpenMP runtime must be loaded for the limit to reach it, so tblite is imported
    first. Used around xTB work in this process (labelling, Hessians for normal modes).

    Raises
    ------
    SetupError
        If tblite is not installed.
    """
    try:
        import tblite.ase  # noqa: F401
    except ImportError as exc:  # pragma: no cover - tblite is a dependency
        raise SetupError("tblite is not importable; install it with `pip install tblite`") from exc
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(threads)):
        yield


def label_many_xtb(
    frames: Sequence[Atoms],
    *,
    method: str = "gfn2-xtb",
    charge: int = 0,
    max_iterations: int = 250,
    workers: int | None = None,
    threads: int = 1,
    progress: bool = True,
    on_result: Callable[[LabelResult], None] | None = None,
) -> list[LabelResult]:
    """Label many molecules with GFN-xTB in parallel: :func:`loops.labelers.label_many` for xTB.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Molecules to label, positions in Å.
    method : {"gfn2-xtb", "gfn1-xtb"}, default "gfn2-xtb"
    charge : int, default 0
        Total charge in e, the same for every configuration.
    max_iterations : int, default 250
        Most SCC iterations per calculation.
    workers : int or None
        Processes of the local pool. ``None``: ``min(len(frames), os.cpu_count() // threads)``,
        so that ``workers * threads`` does not exceed the cores. 1 runs in this process
        (no start-up cost: better for a few hundred small molecules).
    threads : int, default 1
        OpenMP threads of tblite in each process (this one included when ``workers == 1``).
        One is fastest for QM9-sized molecules: measured here, 600 molecules of 3-9 atoms took
        2 s with one thread and 40 s with two on a busy 2-core machine (OpenMP start-up and
        spinning cost more than a 2 ms calculation).
    progress : bool, default True
        Show a rich progress bar.
    on_result : callable or None
        Called in this process with each :class:`~loops.labelers.LabelResult` as it arrives
        (completion order).

    Returns
    -------
    list of LabelResult
        One per configuration, in input order; ``atoms`` as from :func:`label_xtb`
        (``REF_energy`` eV, ``REF_forces`` eV/Å). A failed calculation
        (:class:`~loops.errors.CalculationFailed`, e.g. SCC not converged) gives
        ``ok == False`` with ``error`` set; the others go on.

    Raises
    ------
    SetupError
        Bad settings or ``workers``, or a configuration the settings do not fit (checked for
        all of them before any calculation); stops the run.

    References
    ----------
    Bannwarth, Ehlert & Grimme, J. Chem. Theory Comput. 15, 1652 (2019) (GFN2-xTB).
    """
    method = _check_settings(method, charge, max_iterations)
    frames = list(frames)
    for atoms in frames:
        _check_atoms(atoms, charge)
    n_cpu = os.cpu_count() or 1
    for name, value in (("workers", workers), ("threads", threads)):
        if value is None and name == "workers":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SetupError(f"{name} must be an integer >= 1, got {value!r}")
    if workers is None:
        workers = max(1, min(len(frames), n_cpu // threads))
    if not frames:
        return []
    settings = {"method": method, "charge": int(charge), "max_iterations": int(max_iterations)}

    description = f"labelling with {XTB_METHODS[method]}"
    if workers == 1:
        with omp_threads(threads):
            return label_with(_label_one_xtb, frames, settings, description, Executor(workers=1, progress=progress),
                              on_result)
    # xTB takes milliseconds per molecule: send chunks so that the pool's per-task overhead
    # does not dominate, one result per configuration all the same.
    chunk = max(1, min(64, len(frames) // (4 * workers)))
    return label_with(_label_one_xtb, frames, settings, description,
                      Executor(workers=workers, progress=progress, threads=threads), on_result, chunk=chunk)
