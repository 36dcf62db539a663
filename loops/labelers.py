"""Reference labels from PySCF: an ASE calculator and a parallel labelling driver.

A level of theory is one string, ``xc/basis`` (``pbe/def2-svp``, ``hf/sto-3g``,
``b3lyp/6-31g*``). PySCF works in Hartree and Bohr; everything leaving this
module is in ASE units (eV, Å, eV/Å), converted here and nowhere else.

Set-up problems (an unknown functional or basis, a spin that does not fit the
electron count) raise :class:`~loops.errors.SetupError` before any SCF runs.
A run that gives no trustworthy label (an SCF that does not converge) raises
:class:`~loops.errors.SCFNotConverged`; :func:`label_many` records it against
the configuration and carries on.

References
----------
Q. Sun et al., "PySCF: the Python-based simulations of chemistry framework",
WIREs Comput. Mol. Sci. 8, e1340 (2018).
Q. Sun et al., "Recent developments in the PySCF program package",
J. Chem. Phys. 153, 024109 (2020).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr, Hartree

from loops.errors import CalculationFailed, SCFNotConverged, SetupError
from loops.parallel import Executor
from oed.io import REF_ENERGY, REF_FORCES

__all__ = [
    "GROUND_STATE_SPIN",
    "LabelResult",
    "PySCFLabeler",
    "isolated_atom_energies",
    "label",
    "label_many",
    "parse_level_of_theory",
]

#: Ground-state 2S of the free atoms H..Ar (Hund's rules), keyed by Z.
GROUND_STATE_SPIN: dict[int, int] = {
    1: 1, 2: 0, 3: 1, 4: 0, 5: 1, 6: 2, 7: 3, 8: 2, 9: 1, 10: 0,
    11: 1, 12: 0, 13: 1, 14: 2, 15: 3, 16: 2, 17: 1, 18: 0,
}  # fmt: skip

#: def2 basis sets are built for small-core ECPs from Rb (Z = 37) on
#: (Weigend & Ahlrichs, PCCP 7, 3297 (2005)); PySCF does not add them by itself.
_DEF2_ECP_FROM_Z = 37


def parse_level_of_theory(method: str) -> tuple[str, str]:
    """Split and check a level of theory ``"xc/basis"``.

    Parameters
    ----------
    method
        Exchange-correlation functional and basis set separated by one ``/``,
        e.g. ``"pbe/def2-svp"``, ``"hf/sto-3g"``, ``"b3lyp/6-31g*"``.
        Case-insensitive; white space is ignored. ``hf`` means Hartree–Fock.

    Returns
    -------
    (xc, basis) : tuple of str
        Both lower-case, white space removed.

    Raises
    ------
    SetupError
        If the string does not hold exactly one ``/``, a part is empty, or
        PySCF knows neither the functional (libxc) nor the basis set.
    """
    if not isinstance(method, str):
        raise SetupError(f"level of theory must be a string 'xc/basis', got {method!r}")
    text = "".join(method.split()).lower()
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        raise SetupError(
            f"level of theory {method!r} is not of the form 'xc/basis' (e.g. 'pbe/def2-svp')"
        )
    xc, basis = parts
    from pyscf import gto
    from pyscf.dft import libxc
    from pyscf.lib.exceptions import BasisNotFoundError

    if xc != "hf":
        try:
            libxc.parse_xc(xc)
        except (KeyError, ValueError) as exc:  # what libxc raises for a name it does not know
            raise SetupError(f"unknown exchange-correlation functional {xc!r} in {method!r}") from exc
    with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange
        warnings.simplefilter("ignore")
        try:
            gto.basis.load(basis, "H")
        except BasisNotFoundError as exc:  # anything else is a real PySCF failure: let it show
            raise SetupError(f"unknown basis set {basis!r} in {method!r}") from exc
    return xc, basis


class PySCFLabeler(Calculator):
    """ASE calculator giving molecular DFT or Hartree–Fock energies and forces with PySCF.

    Restricted (RKS/RHF) for a closed shell (``spin == 0``), unrestricted
    (UKS/UHF) otherwise. Every calculation gives both the energy and the
    forces: a label needs both, and the gradient costs less than the SCF.

    Parameters
    ----------
    method : str, default "pbe/def2-svp"
        Level of theory ``"xc/basis"``; see :func:`parse_level_of_theory`.
    charge : int, default 0
        Total charge in units of e.
    spin : int or None, default None
        2S, the number of unpaired electrons. ``None``: 0 for an even electron
        count, 1 for an odd one.
    density_fit : bool, default True
        Density fitting (RI-J/K) with PySCF's default auxiliary basis.
    conv_tol : float, default 1e-9
        SCF energy convergence threshold in Hartree.
    max_cycle : int, default 100
        Most SCF iterations before the run counts as failed.
    threads : int or None, default None
        OpenMP threads for PySCF during a calculation; ``None`` keeps PySCF's setting.
    stability : {"auto", "always", "never"}, default "auto"
        Wave-function stability analysis (:func:`loops.scf.run_scf`); a closed-shell
        RKS unstable towards UKS (bond breaking) gives a broken-symmetry UKS label.
        ``"auto"`` skips it for a DIIS-converged RKS with a HOMO–LUMO gap ≥ ``auto_gap``.
    auto_gap : float, default 0.1
        Gap threshold of ``"auto"``, Hartree (0.1 Ha = 2.72 eV; see :mod:`loops.scf`).
    level_shift, damping : float, default 0.3, 0.5
        Level shift (Hartree) and Fock damping factor of the 2nd and 3rd SCF fallbacks.
    max_stability_rounds : int, default 3
        Most re-optimisations of a solution found unstable.
    time_limit : float, default 1800
        Wall-time limit of one label, s, checked between SCF steps (a running
        PySCF kernel is not interrupted); past it the label fails.

    Attributes
    ----------
    results : dict
        ``"energy"`` : float, eV. ``"forces"`` : ndarray of shape ``(n_atoms, 3)``, eV/Å.
    scf : loops.scf.SCFResult or None
        How the last calculation converged (route, fallback, ⟨S²⟩, stability, cycles), Hartree units.
    level_of_theory : str
        Canonical ``"xc/basis"``.

    Raises
    ------
    SetupError
        At construction (or :meth:`set`) for bad parameters; at calculation
        for a periodic structure, an element the basis lacks, or a spin that
        does not fit the electron count.
    SCFNotConverged
        From :meth:`calculate` when no SCF route of :mod:`loops.scf` converges
        (DIIS → level shift → damping → Newton; broken-symmetry UKS for a closed
        shell) or the wall-time limit is reached; no energy is kept.

    References
    ----------
    Q. Sun et al., WIREs Comput. Mol. Sci. 8, e1340 (2018);
    Q. Sun et al., J. Chem. Phys. 153, 024109 (2020).

    Examples
    --------
    >>> from ase.build import molecule
    >>> atoms = molecule("H2O")
    >>> atoms.calc = PySCFLabeler(method="hf/sto-3g", density_fit=False)
    >>> round(atoms.get_potential_energy(), 1)
    -2039.9
    """

    implemented_properties = ["energy", "forces"]
    default_parameters = {
        "method": "pbe/def2-svp",
        "charge": 0,
        "spin": None,
        "density_fit": True,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "threads": None,
        "stability": "auto",
        "auto_gap": 0.1,
        "level_shift": 0.3,
        "damping": 0.5,
        "max_stability_rounds": 3,
        "time_limit": 1800.0,
    }
    discard_results_on_any_change = True
    scf = None

    def set(self, **kwargs):
        """Change parameters, checked as a whole; results are dropped on any change.

        Raises
        ------
        SetupError
            For an unknown keyword or a bad value.
        """
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise SetupError(
                f"unknown PySCFLabeler parameter(s) {unknown}; known: {sorted(self.default_parameters)}"
            )
        merged = {**self.parameters, **kwargs}
        xc, basis = parse_level_of_theory(merged["method"])
        _check_parameters(merged)
        if "method" in kwargs:
            kwargs["method"] = f"{xc}/{basis}"
        return super().set(**kwargs)

    @property
    def level_of_theory(self) -> str:
        """Canonical level of theory, ``"xc/basis"`` (e.g. ``"pbe/def2-svp"``)."""
        return self.parameters["method"]

    def spin_for(self, atoms: Atoms) -> int:
        """2S used for ``atoms``; raises SetupError when it does not fit the electron count."""
        n_electrons = int(np.sum(atoms.numbers)) - int(self.parameters["charge"])
        if n_electrons <= 0:
            raise SetupError(
                f"{atoms.get_chemical_formula()} with charge {self.parameters['charge']} "
                f"has {n_electrons} electrons"
            )
        spin = self.parameters["spin"]
        if spin is None:
            return n_electrons % 2
        if spin > n_electrons or (n_electrons - spin) % 2:
            raise SetupError(
                f"spin 2S={spin} does not fit {n_electrons} electrons of "
                f"{atoms.get_chemical_formula()} (charge {self.parameters['charge']}): "
                "the parity of 2S must equal that of the electron count"
            )
        return spin

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise SetupError if ``atoms`` cannot be labelled with these settings.

        Checks: no periodic direction, an electron count that fits the spin,
        every element present in the basis set. Cheap; runs no SCF.
        """
        if np.any(atoms.pbc):
            raise SetupError(
                f"PySCFLabeler labels molecules; {atoms.get_chemical_formula()} has pbc={atoms.pbc.tolist()}"
            )
        self.spin_for(atoms)
        basis = self.level_of_theory.split("/")[1]
        for symbol in sorted(set(atoms.get_chemical_symbols())):
            _check_basis_has(basis, symbol)

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        """Run the SCF route of :func:`loops.scf.run_scf` and the gradient; fill ``results`` in eV and eV/Å.

        ``self.scf`` keeps the route taken (Hartree units).

        Raises
        ------
        SetupError
            See :meth:`check_atoms`.
        SCFNotConverged
            When no route converges or the wall-time limit is reached; the
            message lists the steps tried.
        """
        super().calculate(atoms, properties, system_changes)
        self.scf = None
        p = self.parameters
        self.check_atoms(self.atoms)
        from pyscf import gto, lib

        from loops.scf import run_scf

        xc, basis = self.level_of_theory.split("/")
        heavy = {s for s in self.atoms.get_chemical_symbols() if atomic_numbers[s] >= _DEF2_ECP_FROM_Z}
        mol = gto.M(
            atom=[(s, tuple(r)) for s, r in zip(self.atoms.get_chemical_symbols(), self.atoms.positions)],
            unit="Angstrom",
            basis=basis,
            ecp={s: basis for s in heavy} if basis.startswith("def2") and heavy else None,
            charge=int(p["charge"]),
            spin=self.spin_for(self.atoms),
            verbose=0,
        )
        with lib.with_omp_threads(p["threads"]), _linalg_is_a_failure(self.atoms, self.level_of_theory):
            try:
                result = run_scf(
                    mol, xc, density_fit=p["density_fit"], conv_tol=p["conv_tol"], max_cycle=p["max_cycle"],
                    stability=p["stability"], auto_gap=p["auto_gap"], level_shift=p["level_shift"],
                    damping=p["damping"], max_stability_rounds=p["max_stability_rounds"],
                    time_limit=p["time_limit"],
                )
            except SCFNotConverged as exc:
                raise SCFNotConverged(
                    f"SCF not converged for {self.atoms.get_chemical_formula()} at {self.level_of_theory} "
                    f"(max_cycle={p['max_cycle']} per attempt, conv_tol={p['conv_tol']:g} Ha): {exc}"
                ) from exc
        self.scf = result
        self.results = {
            "energy": result.energy * Hartree,
            "forces": -result.gradient * (Hartree / Bohr),
        }


@contextlib.contextmanager
def _linalg_is_a_failure(atoms: Atoms, level: str):
    # A singular overlap or Fock matrix (near-coincident basis functions) ends this
    # configuration's SCF, not the run: it becomes a recorded CalculationFailed.
    try:
        yield
    except np.linalg.LinAlgError as exc:
        raise CalculationFailed(f"linear algebra failed for {atoms.get_chemical_formula()} at {level}: {exc}") from exc


def _check_parameters(p: dict) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(p["charge"]):
        raise SetupError(f"charge must be an integer, got {p['charge']!r}")
    if p["spin"] is not None and not (is_int(p["spin"]) and p["spin"] >= 0):
        raise SetupError(f"spin (2S) must be None or an integer >= 0, got {p['spin']!r}")
    if not isinstance(p["density_fit"], (bool, np.bool_)):
        raise SetupError(f"density_fit must be True or False, got {p['density_fit']!r}")
    if not (isinstance(p["conv_tol"], (int, float)) and 0 < p["conv_tol"] < 1):
        raise SetupError(f"conv_tol must be a number in (0, 1) Hartree, got {p['conv_tol']!r}")
    if not (is_int(p["max_cycle"]) and p["max_cycle"] >= 1):
        raise SetupError(f"max_cycle must be an integer >= 1, got {p['max_cycle']!r}")
    if p["threads"] is not None and not (is_int(p["threads"]) and p["threads"] >= 1):
        raise SetupError(f"threads must be None or an integer >= 1, got {p['threads']!r}")
    if p["stability"] not in ("auto", "always", "never"):
        raise SetupError(f"stability must be 'auto', 'always' or 'never', got {p['stability']!r}")
    for name in ("auto_gap", "level_shift", "time_limit"):
        if not (isinstance(p[name], (int, float)) and not isinstance(p[name], bool) and p[name] > 0):
            raise SetupError(f"{name} must be a positive number, got {p[name]!r}")
    if not (isinstance(p["damping"], (int, float)) and 0 < p["damping"] < 1):
        raise SetupError(f"damping must be a number in (0, 1), got {p['damping']!r}")
    if not (is_int(p["max_stability_rounds"]) and p["max_stability_rounds"] >= 0):
        raise SetupError(f"max_stability_rounds must be an integer >= 0, got {p['max_stability_rounds']!r}")


@functools.lru_cache(maxsize=256)  # PySCF re-parses the basis file on every load
def _check_basis_has(basis: str, symbol: str) -> None:
    from pyscf import gto
    from pyscf.lib.exceptions import BasisNotFoundError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gto.basis.load(basis, symbol)
        except BasisNotFoundError as exc:
            raise SetupError(f"basis set {basis!r} has no functions for {symbol}") from exc


def _labelled_copy(calc: PySCFLabeler, atoms: Atoms) -> Atoms:
    out = atoms.copy()  # Atoms.copy keeps info and arrays but not the calculator
    out.calc = None
    out.info.pop("energy", None)
    out.arrays.pop("forces", None)
    work = out.copy()
    calc.calculate(work, ["energy", "forces"], all_changes)
    out.info[REF_ENERGY] = float(calc.results["energy"])
    out.arrays[REF_FORCES] = np.array(calc.results["forces"], dtype=float)
    out.info["level_of_theory"] = calc.level_of_theory
    # How the SCF converged travels with the label (and into labels.db, loops.store._KEPT_INFO).
    out.info["scf_route"] = calc.scf.route
    out.info["scf_fallback"] = calc.scf.fallback
    out.info["s2"] = float(calc.scf.s2)
    return out


def label(atoms: Atoms, **settings) -> Atoms:
    """Label one configuration.

    Parameters
    ----------
    atoms
        Molecule (no periodic direction), positions in Å.
    **settings
        Keyword parameters of :class:`PySCFLabeler` (``method``, ``charge``, ...).

    Returns
    -------
    ase.Atoms
        A copy with ``info["REF_energy"]`` (eV), ``arrays["REF_forces"]`` of
        shape ``(n_atoms, 3)`` (eV/Å) and ``info["level_of_theory"]``. Other
        ``info`` keys (``config_type``, ...) are kept; a calculator and the
        plain ``energy``/``forces`` keys are dropped.

    Raises
    ------
    SetupError
        Bad settings, or settings that do not fit ``atoms``.
    SCFNotConverged
        The SCF did not converge.
    """
    return _labelled_copy(PySCFLabeler(**settings), atoms)


def isolated_atom_energies(
    symbols: Iterable[str], method: str = "pbe/def2-svp", density_fit: bool = True
) -> dict[str, float]:
    """Energies of the free atoms at their ground-state spin: the E0s of a potential.

    Parameters
    ----------
    symbols
        Element symbols; repeats are computed once.
    method
        Level of theory ``"xc/basis"``, the same as the configurations' labels.
    density_fit
        As in :class:`PySCFLabeler`; match the labels.

    Returns
    -------
    dict of str to float
        Energy in eV per element symbol, in order of first appearance.
        Open shells are unrestricted (UKS/UHF) with 2S from
        :data:`GROUND_STATE_SPIN`; closed shells (He, Be, Ne, Mg, Ar) are
        restricted, which is the same state.

    Raises
    ------
    SetupError
        Unknown symbol, an element beyond Ar, or a bad method.
    SCFNotConverged
        An atomic SCF did not converge.
    """
    calc = PySCFLabeler(method=method, density_fit=density_fit)  # checks method first
    energies: dict[str, float] = {}
    for symbol in symbols:
        if symbol in energies:
            continue
        z = atomic_numbers.get(symbol)
        if z not in GROUND_STATE_SPIN:
            raise SetupError(
                f"no ground-state spin for {symbol!r}: isolated_atom_energies covers "
                f"{chemical_symbols[1]}..{chemical_symbols[max(GROUND_STATE_SPIN)]}"
            )
        calc.set(spin=GROUND_STATE_SPIN[z])
        energies[symbol] = float(calc.get_potential_energy(Atoms(symbol, pbc=False)))
    return energies


@dataclass(frozen=True)
class LabelResult:
    """Outcome of labelling one configuration.

    Attributes
    ----------
    index : int
        Position of the configuration in the input sequence.
    atoms : ase.Atoms or None
        The labelled copy (see :func:`label`); ``None`` on failure.
    error : str or None
        Why no label was made (e.g. SCF not converged); ``None`` on success.
    seconds : float
        Wall time of the calculation in the process that ran it.
    """

    index: int
    atoms: Atoms | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the configuration was labelled."""
        return self.error is None


def _label_one(index: int, atoms: Atoms, settings: dict) -> LabelResult:
    # Module level so that spawned processes and Dask workers can unpickle it.
    start = time.perf_counter()
    try:
        labelled = _labelled_copy(PySCFLabeler(**settings), atoms)
    except CalculationFailed as exc:  # recorded; SetupError propagates and stops the run
        return LabelResult(index, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    return LabelResult(index, labelled, None, time.perf_counter() - start)


def label_many(
    frames: Sequence[Atoms],
    *,
    method: str = "pbe/def2-svp",
    charge: int = 0,
    spin: int | None = None,
    density_fit: bool = True,
    conv_tol: float = 1e-9,
    max_cycle: int = 100,
    workers: int | None = None,
    client=None,
    progress: bool = True,
    on_result: Callable[[LabelResult], None] | None = None,
) -> list[LabelResult]:
    """Label many configurations in parallel, one configuration per task.

    Parameters
    ----------
    frames
        Molecules to label, positions in Å.
    method, charge, spin, density_fit, conv_tol, max_cycle
        As in :class:`PySCFLabeler`; the same for every configuration.
    workers
        Processes of the local pool. ``None``: ``min(len(frames), os.cpu_count())``.
        1 runs in this process with PySCF's own thread count. Each of ``w``
        processes runs ``max(1, os.cpu_count() // w)`` threads. Ignored when
        ``client`` is given.
    client
        A :class:`dask.distributed.Client`: tasks go to its workers instead.
    progress
        Show a rich progress bar (done/total, elapsed time).
    on_result
        Called in this process with each :class:`LabelResult` as it arrives
        (completion order), e.g. to store a label the moment it exists.

    Returns
    -------
    list of LabelResult
        One per configuration, in input order. A configuration whose
        calculation failed (:class:`~loops.errors.CalculationFailed`, e.g. SCF
        not converged) has ``ok == False`` and ``error`` set; the others go on.

    Raises
    ------
    SetupError
        Bad settings or ``workers < 1``, or a configuration the settings do not
        fit (checked for all of them before any SCF runs); stops the run.
    """
    settings = {
        "method": method,
        "charge": charge,
        "spin": spin,
        "density_fit": density_fit,
        "conv_tol": conv_tol,
        "max_cycle": max_cycle,
    }
    checker = PySCFLabeler(**settings)
    settings["method"] = checker.level_of_theory
    for atoms in frames:
        checker.check_atoms(atoms)
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise SetupError(f"workers must be an integer >= 1, got {workers!r}")
    return label_with(_label_one, frames, settings, f"labelling at {settings['method']}",
                      Executor(workers=workers, client=client, progress=progress), on_result)


def label_with(fn, frames: Sequence[Atoms], settings: dict, description: str, executor, on_result=None,
               chunk: int = 1) -> list[LabelResult]:
    """Run ``fn(index, atoms, settings) -> LabelResult`` over ``frames`` on ``executor``.

    The one labelling map of every oracle: results in input order, each passed to
    ``on_result`` in this process as it arrives (to be committed before the next one lands).
    """
    frames = list(frames)
    task = functools.partial(_labelling_task, fn, settings)
    collect = None if on_result is None else (lambda i, result: on_result(result))
    return executor.map(task, list(enumerate(frames)), description=description, on_result=collect, chunk=chunk)


def _labelling_task(fn, settings: dict, item: tuple[int, Atoms]) -> LabelResult:
    index, atoms = item
    problem = geometry_problem(atoms)
    if problem is not None:  # no reference method gives a trustworthy label here: record it, go on
        return LabelResult(index, None, f"unphysical geometry: {problem}", 0.0)
    return fn(index, atoms, settings)


#: Two atoms closer than this fraction of the sum of their covalent radii make a geometry no
#: reference method should label (the shortest real bond, H2 at 0.74 Å, is 1.2 × its sum).
MIN_DISTANCE_FRACTION = 0.5


def geometry_problem(atoms: Atoms, fraction: float = MIN_DISTANCE_FRACTION) -> str | None:
    """Why ``atoms`` is unphysical, or None: a pair closer than ``fraction`` × (r_cov,i + r_cov,j).

    Covalent radii of Cordero et al., Dalton Trans. 2832 (2008) (``ase.data.covalent_radii``);
    pairs from ``ase.neighborlist.neighbor_list`` (periodic images included where pbc is set).
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return None
    radii = fraction * covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, [float(r) for r in radii])
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    a, b = int(i[k]), int(j[k])
    limit = covalent_radii[atoms.numbers[a]] + covalent_radii[atoms.numbers[b]]
    sym = atoms.get_chemical_symbols()
    return (f"atoms {min(a, b)} ({sym[min(a, b)]}) and {max(a, b)} ({sym[max(a, b)]}) are {d[k]:.3f} Å apart, "
            f"below {fraction:g} × their covalent radii sum {limit:.2f} Å")
