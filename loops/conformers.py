"""Molecules and conformers for the diversity tutorials: QM9 geometries, normal-mode sampling,
functional groups from geometry.

- :func:`qm9_molecules`: a deterministic sample of QM9 equilibrium geometries (B3LYP/6-31G(2df,p))
  from the CSV files that the ``qm9pack`` package ships, read directly (no network, and no
  import of ``qm9pack`` itself, whose ``__init__`` needs the removed ``pkg_resources``).
- :func:`normal_modes` / :func:`normal_mode_conformers`: ANI-1's normal-mode sampling (Smith,
  Isayev & Roitberg, Chem. Sci. 8, 3192 (2017)): relax, take the Hessian by finite differences
  (:class:`ase.vibrations.Vibrations`), diagonalise it (:class:`ase.vibrations.VibrationsData`),
  displace along the normal modes at random;
  :func:`xtb_normal_modes` does it at GFN2-xTB for many molecules in parallel, cached on disk.
- :func:`functional_groups`: carbonyl, hydroxyl, ... detected from bond lengths alone (bonds from
  :func:`ase.neighborlist.neighbor_list` with covalent-radius cut-offs).

References
----------
R. Ramakrishnan, P. O. Dral, M. Rupp and O. A. von Lilienfeld, "Quantum chemistry structures
and properties of 134 kilo molecules", Sci. Data 1, 140022 (2014) (QM9).
J. S. Smith, O. Isayev and A. E. Roitberg, "ANI-1: an extensible neural network potential with
DFT accuracy at force field computational cost", Chem. Sci. 8, 3192 (2017).
B. Cordero et al., "Covalent radii revisited", Dalton Trans. 2832 (2008) (``ase.data.covalent_radii``).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms, units

from loops.errors import SetupError
from oed.io import atomic_open

if TYPE_CHECKING:  # imported where used: ase.vibrations pulls in ase.io (~0.7 s)
    from ase.vibrations import VibrationsData

__all__ = [
    "NormalModes",
    "QM9_ELEMENTS",
    "functional_groups",
    "normal_mode_conformers",
    "normal_modes",
    "qm9_molecules",
    "xtb_normal_modes",
]

#: Elements of QM9, in the order of qm9pack's ``Stoichiometry`` column.
QM9_ELEMENTS = ("H", "C", "N", "O", "F")
_QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")

# --------------------------------------------------------------------------------------- QM9


def _qm9_data_dir() -> Path:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("qm9pack is not installed; install it with `pip install qm9pack`")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [f for f in _QM9_FILES if not (data / f).is_file()]
    if missing:
        raise SetupError(f"qm9pack's data files {missing} are missing from {data}")
    return data


#: The start of a qm9pack CSV line: file name, Index, SMILES, InChI, N_atoms, Stoichiometry.
_QM9_HEAD = re.compile(r'^"[^"]*",(\d+),"([^"]*)","[^"]*",\d+,"\[([\d,]+)\]"')


@functools.lru_cache(maxsize=8)
def _qm9_rows(allowed: frozenset[str], required: frozenset[str], max_heavy: int, min_heavy: int):
    """(index, smiles, elements text, xyz text) of the eligible QM9 molecules, by QM9 index.

    The filter reads only the head of each line (a regular expression); the csv module
    parses the lines that pass.
    """
    data = _qm9_data_dir()
    rows = []
    for name in _QM9_FILES:
        with open(data / name, newline="") as fh:
            header = next(csv.reader([fh.readline()]))
            col = {key: header.index(key) for key in ("Index", "SMILES", "Elements", "XYZ_Ang")}
            for line in fh:
                head = _QM9_HEAD.match(line)
                if head is None:
                    raise SetupError(f"unexpected line in {data / name}: {line[:80]!r}")
                counts = dict(zip(QM9_ELEMENTS, (int(c) for c in head.group(3).split(","))))
                present = {s for s, c in counts.items() if c > 0}
                heavy = sum(c for s, c in counts.items() if s != "H")
                if present <= allowed and required <= present and min_heavy <= heavy <= max_heavy:
                    row = next(csv.reader([line]))
                    rows.append((
                        int(row[col["Index"]]), row[col["SMILES"]], row[col["Elements"]], row[col["XYZ_Ang"]],
                    ))  # fmt: skip
    rows.sort(key=lambda r: r[0])
    return tuple(rows)


def _qm9_atoms(row) -> Atoms:
    index, smiles, elements, xyz = row
    symbols = [s.strip().strip("'\"") for s in elements.strip("[]").split(",")]
    # Not JSON: QM9 writes numbers such as "0." (parsed as qm9pack's own makexyz does).
    numbers = [float(x) for x in xyz.replace("[", " ").replace("]", " ").split(",") if x.strip()]
    positions = np.array(numbers, dtype=float).reshape(len(symbols), 3)
    atoms = Atoms(symbols=symbols, positions=positions - positions.mean(axis=0))
    atoms.info["qm9_index"] = int(index)
    atoms.info["smiles"] = smiles
    return atoms


def qm9_molecules(
    n: int | None,
    *,
    elements: Sequence[str] = ("C", "H", "N", "O"),
    required: Sequence[str] = (),
    max_heavy_atoms: int = 9,
    min_heavy_atoms: int = 1,
    seed: int = 0,
    exclude: Iterable[int] = (),
) -> list[Atoms]:
    """A deterministic random sample of QM9 molecules (equilibrium geometries, no labels).

    Parameters
    ----------
    n : int or None
        Number of molecules, >= 0; ``None``: every eligible molecule, in the seeded random order.
    elements : sequence of str, default ("C", "H", "N", "O")
        Allowed elements: a molecule holding any other is left out (the default drops F).
    required : sequence of str, default ()
        Elements every molecule must hold (e.g. ``("C", "H", "O")`` so that every molecule
        has the species of every other: a potential fitted on any of them can predict all).
    max_heavy_atoms, min_heavy_atoms : int, default 9 and 1
        Bounds on the number of non-hydrogen atoms (QM9 holds 1 to 9).
    seed : int, default 0
        The sample is ``numpy.random.default_rng(seed).choice`` over the eligible molecules
        sorted by QM9 index: the same arguments give the same molecules in the same order.
    exclude : iterable of int
        QM9 indices (``info["qm9_index"]``) never to return, e.g. molecules already used.

    Returns
    -------
    list of ase.Atoms
        Positions in Å (B3LYP/6-31G(2df,p) equilibrium, centred), no cell, no pbc;
        ``info["qm9_index"]`` (1..133885) and ``info["smiles"]`` (the SMILES string of the
        QM9 record as qm9pack gives it).

    Raises
    ------
    SetupError
        qm9pack is missing, an element is not in QM9, bad bounds, or fewer than ``n``
        eligible molecules.

    Notes
    -----
    The first call for a set of filters reads qm9pack's CSV files (about 225 MB, ~3 s); the
    eligible rows are cached for the process.
    """
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 0):
        raise SetupError(f"n must be None or an integer >= 0, got {n!r}")
    allowed = frozenset(elements)
    need = frozenset(required)
    unknown = sorted((allowed | need) - set(QM9_ELEMENTS))
    if unknown:
        raise SetupError(f"QM9 holds only {', '.join(QM9_ELEMENTS)}; got {unknown}")
    if not need <= allowed:
        raise SetupError(
            f"required elements {sorted(need - allowed)} are not among the allowed {sorted(allowed)}"
        )
    if not (1 <= min_heavy_atoms <= max_heavy_atoms):
        raise SetupError(
            f"need 1 <= min_heavy_atoms <= max_heavy_atoms, got {min_heavy_atoms} and {max_heavy_atoms}"
        )
    rows = _qm9_rows(allowed, need, int(max_heavy_atoms), int(min_heavy_atoms))
    skip = {int(i) for i in exclude}
    eligible = [r for r in rows if r[0] not in skip]
    if n is None:
        n = len(eligible)
    if len(eligible) < n:
        raise SetupError(
            f"only {len(eligible)} QM9 molecules fit elements={sorted(allowed)}, required={sorted(need)}, "
            f"{min_heavy_atoms}..{max_heavy_atoms} heavy atoms and the exclusions; asked for {n}"
        )
    picks = np.random.default_rng(seed).choice(len(eligible), size=int(n), replace=False)
    return [_qm9_atoms(eligible[i]) for i in picks]


# ---------------------------------------------------------------------- normal-mode sampling

#: ħω in eV of a mass-weighted Hessian eigenvalue of 1 eV/(Å² amu) (the factor
#: :class:`ase.vibrations.VibrationsData` applies): converts ħω back to the eigenvalue.
_HBAR_OMEGA_EV = units._hbar * units.m / np.sqrt(units._e * units._amu)


@dataclass(frozen=True)
class NormalModes:
    """Harmonic vibrations of a molecule at a (relaxed) geometry.

    The analysis itself is :class:`ase.vibrations.VibrationsData` (mass-weighted
    diagonalisation with ASE's standard atomic masses); this class stores what it needs,
    drops the rigid-body modes and samples conformers.

    Attributes
    ----------
    atoms : ase.Atoms
        The geometry the Hessian belongs to (positions in Å), no calculator.
    hessian : ndarray, shape (3 n_atoms, 3 n_atoms)
        Cartesian Hessian in eV/Å², ordered atom by atom (x, y, z), symmetrised.
    """

    atoms: Atoms
    hessian: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` atomically (numbers, positions, Hessian, ``info`` as JSON)."""
        info = {k: v for k, v in self.atoms.info.items() if isinstance(v, (str, int, float, bool))}
        with atomic_open(path, "wb") as fh:
            np.savez(fh, numbers=self.atoms.numbers, positions=self.atoms.positions, hessian=self.hessian,
                     info=np.array(json.dumps(info)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormalModes:
        """Read what :meth:`save` wrote."""
        with np.load(path) as data:
            atoms = Atoms(numbers=data["numbers"], positions=data["positions"])
            atoms.info.update(json.loads(str(data["info"])))
            return cls(atoms, np.array(data["hessian"], dtype=float))

    def vibrations(self) -> VibrationsData:
        """All 3 n_atoms harmonic modes, rigid-body ones included, as ASE computes them.

        Masses are ASE's standard atomic masses (``ase.data.atomic_masses``), whatever
        ``atoms`` carries, so that a saved and reloaded object gives the same modes.
        """
        from ase.vibrations import VibrationsData

        bare = Atoms(numbers=self.atoms.numbers, positions=self.atoms.positions)
        return VibrationsData.from_2d(bare, self.hessian, indices=range(len(bare)))

    def _vibrational(self) -> tuple[np.ndarray, np.ndarray]:
        """Signed ħω (eV, imaginary as negative) and Cartesian mode vectors, rigid-body modes removed."""
        energies, cartesian = self.vibrations().get_energies_and_modes()
        signed = energies.real - energies.imag  # ASE: sqrt of a negative eigenvalue is +i|ħω|
        n_rigid = 5 if _is_linear(self.atoms) else 6
        keep = np.sort(np.argsort(np.abs(signed))[n_rigid:])  # drop the near-zero rigid-body modes
        return signed[keep], cartesian[keep]

    def modes(self) -> tuple[np.ndarray, np.ndarray]:
        """Vibrational eigenpairs of the mass-weighted Hessian, rigid-body modes removed.

        Returns
        -------
        eigenvalues : ndarray, shape (n_modes,)
            In eV/(Å² amu), ascending; negative for an imaginary frequency.
            ``n_modes = 3 n_atoms - 6`` (``- 5`` for a linear molecule).
        vectors : ndarray, shape (3 n_atoms, n_modes)
            Orthonormal in mass-weighted coordinates (Å amu^½).
        """
        signed, cartesian = self._vibrational()
        sqrt_m = np.sqrt(Atoms(numbers=self.atoms.numbers).get_masses())  # the masses of vibrations()
        vectors = (cartesian * sqrt_m[None, :, None]).reshape(len(signed), -1).T
        return np.sign(signed) * (signed / _HBAR_OMEGA_EV) ** 2, vectors

    def frequencies_cm(self) -> np.ndarray:
        """Harmonic wavenumbers in cm⁻¹, ascending; imaginary ones as negative numbers."""
        return self._vibrational()[0] / units.invcm

    def sample(
        self,
        n: int,
        *,
        temperature_K: float,
        rng: np.random.Generator,
        min_frequency_cm: float = 100.0,
    ) -> list[Atoms]:
        """``n`` random displacements along the normal modes (ANI-1 normal-mode sampling).

        For each conformer, ``N_f`` numbers ``u_i ~ U(0, 1)`` are drawn and scaled to
        ``c_i = s u_i / Σ u`` with ``s ~ U(0, 1)``, so that ``Σ c_i`` is uniform on [0, 1];
        mode ``i`` (mass-weighted eigenvalue ``λ_i``) is displaced by the normal coordinate
        ``q_i = ±sqrt(3 c_i N_a k_B T / λ_i)`` with a random sign (Smith et al. 2017, eq. 4,
        written in mass-weighted coordinates). Each mode then holds the harmonic energy
        ``λ_i q_i² / 2 = 3/2 c_i N_a k_B T``: the total is ``3/2 N_a k_B T · s``, between zero
        and about the classical potential energy of all modes at ``T`` (``N_f k_B T / 2``
        with ``N_f ≈ 3 N_a``) and on average half of it.

        Parameters
        ----------
        n : int
            Number of conformers.
        temperature_K : float
            Temperature ``T`` in K (> 0): displacements grow as ``sqrt(T)``.
        rng : numpy.random.Generator
            Source of randomness; the same generator state gives the same conformers.
        min_frequency_cm : float, default 100
            Modes softer than this (cm⁻¹), and imaginary ones, are displaced as if their
            frequency were this: a harmonic step along a soft torsion would otherwise be
            several Å long and tear bonds apart (a guard of this module, not of ANI-1).

        Returns
        -------
        list of ase.Atoms
            Copies of :attr:`atoms` (``info`` kept) with displaced positions and
            ``info["nms_temperature_K"]`` and ``info["nms_harmonic_energy"]`` (eV).
        """
        if not (isinstance(n, (int, np.integer)) and n >= 0):
            raise SetupError(f"n must be an integer >= 0, got {n!r}")
        if not (np.isfinite(temperature_K) and temperature_K > 0):
            raise SetupError(f"temperature_K must be a positive number, got {temperature_K!r}")
        signed, cartesian = self._vibrational()
        # mass-weighted eigenvalues in eV/(Å² amu); softer (and imaginary) modes as if min_frequency_cm
        lam = (np.maximum(np.abs(signed), float(min_frequency_cm) * units.invcm) / _HBAR_OMEGA_EV) ** 2
        n_atoms = len(self.atoms)
        out = []
        for _ in range(int(n)):
            u = rng.random(len(lam))
            c = rng.random() * u / u.sum()
            signs = rng.choice((-1.0, 1.0), size=len(lam))
            q = signs * np.sqrt(3.0 * c * n_atoms * units.kB * temperature_K / lam)  # Å amu^½
            dx = np.tensordot(q, cartesian, axes=1)  # ASE's modes are Cartesian per unit q: (n_atoms, 3)
            conf = self.atoms.copy()
            conf.positions = conf.positions + dx
            conf.info["nms_temperature_K"] = float(temperature_K)
            conf.info["nms_harmonic_energy"] = float(0.5 * np.sum(lam * q**2))
            out.append(conf)
        return out


def _is_linear(atoms: Atoms, tol: float = 1e-3) -> bool:
    if len(atoms) <= 2:
        return True
    inertia = np.sort(atoms.get_moments_of_inertia())
    return inertia[0] < tol * max(inertia[-1], 1e-12)


def normal_modes(
    atoms: Atoms,
    calc,
    *,
    relax: bool = True,
    fmax: float = 0.01,
    max_steps: int = 500,
    delta: float = 0.01,
) -> NormalModes:
    """Relax a molecule with ``calc`` and take its Hessian by central finite differences.

    Parameters
    ----------
    atoms : ase.Atoms
        Molecule, 2 atoms or more; not changed.
    calc : ase Calculator
        Gives forces (eV/Å), e.g. ``tblite.ase.TBLite(method="GFN2-xTB", verbosity=0)``.
    relax : bool, default True
        Relax with BFGS first (a QM9 geometry is a B3LYP minimum, not one of ``calc``:
        normal modes are only meaningful at a minimum of the same potential).
    fmax : float, default 0.01
        Force threshold of the relaxation in eV/Å.
    max_steps : int, default 500
        Most BFGS steps; the geometry reached is used either way.
    delta : float, default 0.01
        Finite-difference step in Å (:class:`ase.vibrations.Vibrations`, ``nfree=2``).

    Returns
    -------
    NormalModes
    """
    if len(atoms) < 2:
        raise SetupError("normal modes need a molecule of 2 atoms or more")
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    work.calc = calc
    if relax:
        BFGS(work, logfile=None).run(fmax=fmax, steps=max_steps)
    with tempfile.TemporaryDirectory(prefix="oed_vib_") as tmp:
        vib = Vibrations(work, name=str(Path(tmp) / "vib"), delta=delta, nfree=2)
        vib.run()
        hessian = np.array(vib.get_vibrations().get_hessian_2d(), dtype=float)
    eq = atoms.copy()
    eq.calc = None
    eq.positions = work.positions.copy()
    return NormalModes(eq, 0.5 * (hessian + hessian.T))


def normal_mode_conformers(
    atoms: Atoms,
    calc,
    n: int,
    *,
    temperature_K: float,
    rng: np.random.Generator,
    relax: bool = True,
    min_frequency_cm: float = 100.0,
) -> list[Atoms]:
    """``n`` normal-mode-sampled conformers of a molecule (ANI-1 recipe, Smith et al. 2017).

    :func:`normal_modes` (relax, then Hessian by finite differences) followed by
    :meth:`NormalModes.sample`; see there for the distribution of the displacements.

    Parameters
    ----------
    atoms : ase.Atoms
        Molecule, 2 atoms or more.
    calc : ase Calculator
        Potential for the relaxation and the Hessian (e.g. GFN2-xTB through tblite).
    n : int
        Number of conformers.
    temperature_K : float
        Sampling temperature in K.
    rng : numpy.random.Generator
    relax : bool, default True
    min_frequency_cm : float, default 100

    Returns
    -------
    list of ase.Atoms
        Unlabelled conformers, ``info`` of ``atoms`` kept.
    """
    modes = normal_modes(atoms, calc, relax=relax)
    return modes.sample(n, temperature_K=temperature_K, rng=rng, min_frequency_cm=min_frequency_cm)


def _xtb_modes_task(job: tuple[Atoms, str]) -> NormalModes:
    # Module level so that spawned worker processes can unpickle it.
    from tblite.ase import TBLite

    from loops.xtb import XTB_METHODS, omp_threads

    atoms, method = job
    with omp_threads(1):
        return normal_modes(atoms, TBLite(method=XTB_METHODS[method], verbosity=0))


def xtb_normal_modes(
    molecules: Sequence[Atoms],
    *,
    method: str = "gfn2-xtb",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[NormalModes]:
    """:func:`normal_modes` of many molecules at GFN-xTB, in parallel, cached on disk.

    Each molecule is relaxed with GFN-xTB and its Hessian taken by finite differences
    (``6 n_atoms`` xTB calculations, about a second for a QM9 molecule) in a pool of
    single-threaded processes.

    Parameters
    ----------
    molecules : sequence of ase.Atoms
        Molecules of 2 atoms or more (e.g. from :func:`qm9_molecules`).
    method : {"gfn2-xtb", "gfn1-xtb"}, default "gfn2-xtb"
    cache_dir : path or None
        Folder of ``{method}_{structure hash}.npz`` files: a molecule found there is read,
        not recomputed; a new one is written the moment it is done (a rerun resumes).
    workers : int or None
        Processes; ``None``: ``min(len(molecules), os.cpu_count())``; 1 runs here.
    progress : bool, default True
        Show a rich progress bar.

    Returns
    -------
    list of NormalModes, in input order; ``atoms.info`` of each input kept.

    Raises
    ------
    SetupError
        Unknown method or bad ``workers``.
    """
    from loops.parallel import Executor
    from loops.xtb import _canonical_method
    from oed.io import structure_hash

    method = _canonical_method(method)
    molecules = list(molecules)
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise SetupError(f"workers must be an integer >= 1, got {workers!r}")
    cache = Path(cache_dir) if cache_dir is not None else None
    paths = [cache / f"{method}_{structure_hash(a)}.npz" if cache else None for a in molecules]
    out: list[NormalModes | None] = [None] * len(molecules)
    for i, (atoms, path) in enumerate(zip(molecules, paths)):
        if path is not None and path.is_file():
            out[i] = NormalModes.load(path)
            out[i].atoms.info.update(atoms.info)
    todo = [i for i, modes in enumerate(out) if modes is None]

    def done(k: int, modes: NormalModes) -> None:  # in this process, the moment a molecule is done
        i = todo[k]
        modes.atoms.info.update(molecules[i].info)
        if paths[i] is not None:
            modes.save(paths[i])
        out[i] = modes

    # one thread per process: a QM9-sized xTB calculation takes milliseconds
    executor = Executor(workers=workers, progress=progress and bool(todo), threads=1)
    executor.map(_xtb_modes_task, [(molecules[i], method) for i in todo],
                 description=f"normal modes ({method})", on_result=done)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------- functional groups

#: Two atoms are bonded when closer than this factor times the sum of their covalent radii
#: (Cordero 2008: H 0.31, C 0.76, N 0.71, O 0.66 Å; e.g. C–O bonded below 1.70 Å).
BOND_FACTOR = 1.2
#: C=O double bonds are 1.20–1.23 Å, C–O single bonds 1.33–1.45 Å.
CO_DOUBLE_MAX = 1.30
#: C≡N triple bonds are 1.14–1.17 Å, C=N double bonds 1.27–1.30 Å.
CN_TRIPLE_MAX = 1.21
#: C≡C triple bonds are 1.18–1.21 Å, C=C double bonds 1.32–1.35 Å.
CC_TRIPLE_MAX = 1.25
#: Amine C–N single bonds are 1.45–1.48 Å (amide C–N 1.33–1.38 Å, aromatic C–N ~1.34 Å).
CN_SINGLE_MIN = 1.42


def functional_groups(atoms: Atoms) -> set[str]:
    """Functional groups of a molecule, detected from its geometry alone.

    Bonds: two atoms closer than :data:`BOND_FACTOR` (1.2) times the sum of their covalent
    radii (:func:`ase.neighborlist.natural_cutoffs`; the cell is ignored). Groups, with the
    bond-length thresholds that tell bond orders apart (use a near-equilibrium geometry):

    - ``"carbonyl"``: an O bonded only to one C, at < 1.30 Å (C=O; aldehydes, ketones,
      acids, esters, amides);
    - ``"hydroxyl"``: an O bonded to exactly one H and one other atom (alcohols, acids);
    - ``"ether"``: an O bonded to two C (ethers, the single-bonded O of esters);
    - ``"nitrile"``: an N bonded only to one C, at < 1.21 Å (C≡N);
    - ``"amide"``: an N bonded to a carbonyl C;
    - ``"amine"``: an N bonded to three C or H, no carbonyl C among them, every C–N
      >= 1.42 Å (single bonds: not aromatic, not amide, not nitro);
    - ``"alkyne"``: two C at < 1.25 Å (C≡C).

    Parameters
    ----------
    atoms : ase.Atoms

    Returns
    -------
    set of str
        Names from the list above; empty for none (e.g. an alkane).
    """
    from ase.neighborlist import natural_cutoffs, neighbor_list

    molecule = Atoms(numbers=atoms.numbers, positions=atoms.positions)  # no cell: images never bond
    first, second, dist = neighbor_list("ijd", molecule, natural_cutoffs(molecule, mult=BOND_FACTOR))
    nbrs = [second[first == i].tolist() for i in range(len(atoms))]
    d = dict(zip(zip(first.tolist(), second.tolist()), dist.tolist()))  # bond lengths in Å
    sym = atoms.get_chemical_symbols()
    groups: set[str] = set()
    carbonyl_c: set[int] = set()
    for i, s in enumerate(sym):
        if s == "O" and len(nbrs[i]) == 1 and sym[nbrs[i][0]] == "C" and d[i, nbrs[i][0]] < CO_DOUBLE_MAX:
            groups.add("carbonyl")
            carbonyl_c.add(nbrs[i][0])
    for i, s in enumerate(sym):
        nb = [sym[j] for j in nbrs[i]]
        if s == "O":
            if len(nb) == 2 and nb.count("H") == 1:
                groups.add("hydroxyl")
            if len(nb) == 2 and nb.count("C") == 2:
                groups.add("ether")
        elif s == "N":
            if len(nb) == 1 and nb[0] == "C" and d[i, nbrs[i][0]] < CN_TRIPLE_MAX:
                groups.add("nitrile")
            if any(j in carbonyl_c for j in nbrs[i]):
                groups.add("amide")
            elif len(nb) == 3 and set(nb) <= {"C", "H"} and all(
                sym[j] == "H" or d[i, j] >= CN_SINGLE_MIN for j in nbrs[i]
            ):
                groups.add("amine")
        elif s == "C":
            if any(sym[j] == "C" and d[i, j] < CC_TRIPLE_MAX for j in nbrs[i]):
                groups.add("alkyne")
    return groups
