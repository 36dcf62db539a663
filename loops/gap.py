"""Gaussian Approximation Potentials (GAP) fitted with ``gap_fit`` and evaluated with quippy.

A sparse GAP writes the energy of a configuration as a sum of atomic energies, each a sparse
Gaussian-process regression on the atom's SOAP environment (Bartók et al., PRL 104, 136403, 2010;
Bartók & Csányi, IJQC 115, 1051, 2015); SOAP is the smooth overlap of atomic positions with the
dot-product kernel ``k(q, q') = (q̂·q̂')^ζ`` (Bartók, Kondor & Csányi, PRB 87, 184115, 2013).

:class:`GAPSettings` (in :mod:`loops.gap_settings`, re-exported here) holds the hyperparameters
and builds the ``gap_fit`` command line;
:class:`GAPModel` writes the training file, runs ``gap_fit`` in a work directory and predicts
energies (eV) and forces (eV/Å) through ``quippy.potential.Potential``. quippy is imported lazily.

Notes on ``gap_fit`` (seen here, quippy-ase 0.10.3):

- one SOAP descriptor per central species, written with ``add_species=F`` (its ``n_sparse``
  capped at that species' number of environments; docs/design.md §6). With the default
  ``add_species=T`` gap_fit treats *every* descriptor as a template and makes one copy per species
  of the training set, overriding ``Z``: three per-species descriptors silently become nine.
- gap_fit reads the energy of a configuration only when its extxyz header has a ``Lattice``:
  without one it reports ``Number of target energies ... found: 0`` and silently fits forces
  alone (a 50-configuration ethanol GAP then predicted total energies 31 eV too high).
  :meth:`GAPModel.fit` gives a non-periodic configuration without a cell a box around it.
- a 2-body (``distance_2b``) descriptor for a species pair with no pair inside the cutoff
  makes gap_fit exit 1 without a message (ethanol has one O, so no O–O pair): 2-body terms are
  written only for the pairs the training set has, each with ``add_species=F``.
- gap_fit here is single-threaded, and its covariance loop streams every descriptor gradient
  once per sparse point: its time grows as (sparse points) × (descriptor partial derivatives,
  as gap_fit's log counts them) × (descriptor length), about 1.6 s per 10⁹ of that product on
  one core here (memory-bound). The dense QR solve that follows grows as (targets) ×
  (sparse points)²: 78 s for 28 000 targets and 4100 sparse points.
- gap_fit writes its reason (``SYSTEM ABORT: unknown sparse method ...``) unbuffered to stderr
  and its report buffered to stdout, so in the combined log the reason is near the *top* and
  the tail looks like a silent ``exit 1``: the error quotes every such line (:data:`GAP_FIT`).
- ``cur_points`` sparsification is random and gap_fit seeds from the clock by default: two fits
  of the same data differ unless ``rnd_seed`` is fixed (it must be >= 1; 0 aborts).
- the potential ``gap.xml`` needs the ``gap.xml.sparseX.*`` files written beside it; they are
  looked up relative to the directory of ``gap.xml``, so the files must stay together.
"""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from loops.errors import SetupError
from loops.fitting import (
    FitPlan, FitProgram, SubprocessModel, check_elements, find_program, species_e0s,
)
from loops.gap_settings import BASELINE_SETTINGS, GAPSettings  # noqa: F401 (re-exported: the public names stay in loops.gap)
from oed.errors import InputError

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

    from oed.design import FeatureSpec

#: Names of the files a fit writes into its work directory.
TRAIN_FILE = "train.xyz"
POTENTIAL_FILE = "gap.xml"
LOG_FILE = "gap_fit.log"
#: Lines in which gap_fit (libAtoms / Fortran) states why it stopped.
_ABORT = re.compile(r"SYSTEM ABORT|^\s*ERROR\b|Traceback|^\s*STOP [1-9]|Segmentation fault|Killed")
#: gap_fit as :mod:`loops.fitting` runs it. It writes its ``SYSTEM ABORT`` line to stderr
#: unbuffered and its report to stdout buffered, so in the combined log the reason sits near
#: the *top*: every such line is quoted, not only the last.
GAP_FIT = FitProgram(
    name="gap_fit", speaker="gap_fit", reasons=_ABORT, every_reason=True,
    hint="\n(gap_fit gave no reason — it sometimes exits 1 without one: check the settings, "
    "e.g. sparse_method, n_sparse, species without data, and read the full log {log})",
)
#: gap_fit sparse methods that :class:`oed.features.GAPKernelFeatures` reproduces.
_FEATURE_SPARSE_METHODS = ("cur_points", "random")


def find_gap_fit() -> str:
    """Path of ``gap_fit``, beside the running Python or on ``PATH`` (:func:`loops.fitting.find_program`)."""
    return find_program("gap_fit", "`pip install quippy-ase`")


def _read_potential_metadata(path: Path) -> tuple[tuple[str, ...], dict[str, float], int | None]:
    """Central species, their E0s and the number of training configurations of a gap.xml."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"cannot read GAP potential {path}: {exc}") from exc
    zs: set[int] = set()
    for desc in root.iter("descriptor"):
        found = re.findall(r"(?<![\w])Z=(\d+)", desc.text or "")
        if found:
            zs.add(int(found[-1]))  # gap_fit's parser: the last value of a key wins
    if not zs:
        raise InputError(f"{path} holds no GAP descriptor with a central species (Z=...)")
    e0_by_z = {}
    for e0 in root.iter("e0"):
        with contextlib.suppress(TypeError, ValueError):  # an e0 entry without Z or value says nothing
            e0_by_z[int(e0.get("Z"))] = float(e0.get("value"))
    species = tuple(chemical_symbols[z] for z in sorted(zs))
    e0s = {chemical_symbols[z]: e0_by_z.get(z, 0.0) for z in sorted(zs)}
    xyz = list(root.iter("XYZ_data"))
    n_train = sum((d.text or "").count("Properties=") for d in xyz) if xyz else None
    return species, e0s, n_train


class GAPModel(SubprocessModel):
    """A sparse GAP potential fitted by ``gap_fit`` (Bartók et al., PRL 104, 136403, 2010).

    A :class:`loops.models.ModelWithVariance`. :meth:`fit` (:class:`loops.fitting.SubprocessModel`)
    writes ``train.xyz`` (a configuration without a cell gets a box: module notes), runs gap_fit
    and leaves ``gap_fit.log``, ``gap.xml`` and its ``gap.xml.sparseX.*`` files in the work
    directory.

    Parameters
    ----------
    settings : GAPSettings or None
        Hyperparameters; ``None`` means ``GAPSettings()``.

    Attributes
    ----------
    potential_file_ : pathlib.Path
        Absolute path of the fitted ``gap.xml`` (its ``gap.xml.sparseX.*`` files lie beside it).
    species_ : tuple of str
        Elements the model was fitted on, by atomic number.
    e0s_ : dict of str to float
        Isolated-atom energies (eV) used in the fit.
    n_train_ : int or None
        Number of training configurations (``None`` if a loaded file does not say).

    Examples
    --------
    >>> model = GAPModel(GAPSettings(n_max=4, l_max=3)).fit(frames, e0s=e0s, workdir="fit")  # doctest: +SKIP
    >>> energies, forces = model.predict(test_frames)  # doctest: +SKIP
    >>> atoms.calc = model.as_calculator()  # doctest: +SKIP
    """

    settings_class = GAPSettings
    program = GAP_FIT
    log_file = LOG_FILE
    fitted_file = "potential_file_"
    caches = ("_potential",)  # the quippy object: not pickled, reloaded from the file
    fit_hint = "call fit() or GAPModel.load() first"

    def _plan(self, train: list[Atoms], e0s: Mapping[str, float], settings: GAPSettings, work: Path) -> FitPlan:
        n_envs: Counter[str] = Counter()
        pair_counts: Counter[tuple[str, str]] = Counter()
        for i, clean in enumerate(train):
            if clean.cell.rank < 3:
                if clean.pbc.any():
                    raise InputError(f"training configuration {i} is periodic along {clean.pbc.tolist()} "
                                     "but its cell is not three-dimensional")
                # gap_fit ignores the energy of a configuration written without a Lattice.
                side = float(np.ptp(clean.positions, axis=0).max()) + 2.0 * settings.cutoff + 1.0
                clean.cell = np.eye(3) * side
            n_envs.update(clean.get_chemical_symbols())
            if settings.two_body_delta is not None:
                pair_counts.update(_pairs_within(clean, settings.cutoff))
        e0_used = species_e0s(n_envs, e0s)
        argv = settings.command(TRAIN_FILE, POTENTIAL_FILE, e0_used, list(e0_used), n_envs=n_envs,
                                pair_counts=pair_counts if settings.two_body_delta is not None else None,
                                executable=find_gap_fit())
        return FitPlan(
            argv=argv, inputs={TRAIN_FILE: train}, output=POTENTIAL_FILE, what="potential",
            # a stale potential must not survive a failed fit; a stale index must not describe a new file
            stale=(POTENTIAL_FILE, TRAIN_FILE + ".idx", POTENTIAL_FILE + ".sparseX.*"),
            fitted={"potential_file_": work / POTENTIAL_FILE, "species_": tuple(e0_used), "e0s_": e0_used,
                    "n_train_": len(train)},
        )

    @classmethod
    def load(cls, potential_file: str | os.PathLike, settings: GAPSettings | None = None) -> GAPModel:
        """A fitted model from an existing ``gap.xml`` (its ``sparseX`` files beside it).

        ``species_``, ``e0s_`` and ``n_train_`` are read from the file; ``settings`` is only
        stored (the file's hyperparameters are not parsed back).

        Raises
        ------
        InputError
            If the file is missing or holds no GAP descriptor.
        """
        path = Path(potential_file).resolve()
        if not path.is_file():
            raise InputError(f"GAP potential file not found: {path}")
        species, e0s, n_train = _read_potential_metadata(path)
        model = cls(settings)
        model.potential_file_, model.species_, model.e0s_, model.n_train_ = path, species, e0s, n_train
        return model

    @classmethod
    def load_dir(cls, workdir: str | os.PathLike, settings: GAPSettings | None = None) -> GAPModel:
        """:meth:`load` of ``workdir/gap.xml`` (a campaign's round model; raises as :meth:`load`)."""
        return cls.load(Path(workdir) / POTENTIAL_FILE, settings)

    def _new_quippy(self, **kwargs: Any) -> Any:
        """A new ``quippy.potential.Potential`` (an ASE calculator) of the fitted ``gap.xml``."""
        self._check_fitted()
        try:
            from quippy.potential import Potential  # lazy: quippy is heavy
        except ImportError as exc:
            raise SetupError("quippy is not importable; install it with `pip install quippy-ase`") from exc
        try:
            return Potential(param_filename=str(self.potential_file_), **kwargs)
        except RuntimeError as exc:
            raise InputError(f"quippy cannot load GAP potential {self.potential_file_}: {exc}") from exc

    def _quippy_potential(self) -> Any:
        if getattr(self, "_potential", None) is None:
            self._potential = self._new_quippy()
        return self._potential

    def as_calculator(self) -> Calculator:
        """The fitted GAP as an ASE calculator: a new ``quippy.potential.Potential`` each call.

        Energies (eV) and forces (eV/Å) are those of :meth:`predict` (the same evaluation).

        Raises
        ------
        NotFittedError, SetupError, InputError
            Not fitted or loaded; quippy missing; quippy cannot load the potential file.
        """
        return self._new_quippy()

    def feature_spec(self, forces: bool, prior: str = "identity") -> FeatureSpec:
        """The features this GAP selects in: its own SOAP, kernel and sparsification.

        GAP kernel features φ(A) = Σ_i k(q̂_i, Q_M) (docs/design.md §1) with quippy's SOAP at
        this GAP's ``cutoff``, ``n_max``, ``l_max``, ``atom_sigma`` and ``diagonal_radial``, its
        ``zeta``, and ``n_sparse`` environments per species picked by its ``sparse_method``
        (gap_fit's ``cur_points``: leverage-score CUR, Mahoney & Drineas, PNAS 106, 697, 2009)
        — among the pool's atoms, where gap_fit picks among the training set's. Rows are
        divided by ``energy_sigma`` (per atom) and ``force_sigma``. The 2-body term has no
        features here. Needs no fit: the settings fix it.

        Parameters
        ----------
        forces : bool
            Add the 3N force rows to each configuration's block.
        prior : {"identity", "kmm"}, default "identity"
            ``"kmm"``: rows whitened by this GAP's sparse-GP prior K_MM/δ² (``gap-gp`` spaces).

        Raises
        ------
        SetupError
            A ``sparse_method`` other than cur_points or random, or a
            ``cutoff_transition_width`` other than 1 Å (``FeatureSpec`` has no field for it).
        """
        from oed.design import FeatureSpec  # lazy: oed.design pulls the selectors

        s = self._settings()
        method = s.sparse_method.lower()  # gap_fit reads it in any case
        if method not in _FEATURE_SPARSE_METHODS:
            raise SetupError(f"GAP kernel features cannot pick sparse points like sparse_method="
                             f"{s.sparse_method!r}; they follow {', '.join(_FEATURE_SPARSE_METHODS)}")
        if s.cutoff_transition_width != 1.0:
            raise SetupError(f"GAP kernel features use cutoff_transition_width 1.0 Å, this GAP has "
                             f"{s.cutoff_transition_width}: oed.design.FeatureSpec cannot carry another yet")
        return FeatureSpec(
            kind="gap-kernel", backend="quippy", forces=bool(forces), sigma_energy=s.energy_sigma,
            sigma_force=s.force_sigma, r_cut=s.cutoff, n_max=s.n_max, l_max=s.l_max, sigma=s.atom_sigma,
            diagonal_radial=s.diagonal_radial, zeta=s.zeta, n_sparse=s.n_sparse, sparse_method=method,
            prior=prior, delta=s.delta,
        )

    def _evaluate(self, frames: Sequence[Atoms], pot: Any, progress: bool = False) -> Iterator[Atoms]:
        """Each configuration as a bare copy with ``pot`` attached (the caller's atoms untouched)."""
        iterator: Iterable[Atoms] = frames
        if progress:
            from rich.progress import track

            iterator = track(frames, total=len(frames), description="GAP predict")
        for atoms in iterator:
            work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            work.calc = pot
            yield work
            work.calc = None

    def predict(
        self, frames: Sequence[Atoms], *, progress: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces of configurations; the caller's atoms are not touched.

        Parameters
        ----------
        frames : sequence of ase.Atoms
        progress : bool, default False
            Show a rich progress bar (long test sets: ~50 ms per 9-atom configuration).

        Returns
        -------
        energies : ndarray, shape (n_frames,)
            Total energies in eV (E0s included).
        forces : list of ndarray, each (n_atoms_i, 3)
            Forces in eV/Å.

        Raises
        ------
        NotFittedError, UnknownElementError
            Neither fitted nor loaded; an element the model was not fitted on.
        """
        self._check_fitted()
        frames = list(frames)
        check_elements(frames, self.species_, model="GAP")
        energies, forces = [], []
        for work in self._evaluate(frames, self._quippy_potential(), progress):
            energies.append(float(work.get_potential_energy()))
            forces.append(np.array(work.get_forces(), dtype=float))
        return np.array(energies, dtype=float), forces

    def predict_variance(self, frames: Sequence[Atoms]) -> np.ndarray:
        """GAP predictive variance of each configuration's energy, summed over its atoms (eV²).

        quippy's ``local_gap_variance`` is the sparse-GP posterior variance of each atomic energy
        (Bartók & Csányi, IJQC 115, 1051, 2015, §4); their sum ignores the covariance between
        atoms, the usual per-configuration uncertainty of a GAP in active learning.

        Returns ``(n_frames,)``; raises as :meth:`predict`.
        """
        self._check_fitted()
        frames = list(frames)
        check_elements(frames, self.species_, model="GAP")
        # A second quippy object with the variance switched on: computing it costs more than
        # energies and forces, so the plain predictor stays without it.
        pot = self._new_quippy(calc_args="local_gap_variance")
        out = []
        for work in self._evaluate(frames, pot):
            work.get_potential_energy()
            out.append(float(np.sum(pot.extra_results["atoms"]["local_gap_variance"])))
        return np.array(out, dtype=float)


def _pairs_within(atoms: Atoms, cutoff: float) -> Counter[tuple[str, str]]:
    """Atom pairs closer than ``cutoff`` (Å), counted once each, by symbols in atomic-number order."""
    from ase.neighborlist import neighbor_list  # lazy

    i, j = neighbor_list("ij", atoms, cutoff)
    keep = i <= j  # i == j only between periodic images of one atom
    z = atoms.numbers
    lo = np.minimum(z[i[keep]], z[j[keep]])
    hi = np.maximum(z[i[keep]], z[j[keep]])
    return Counter((chemical_symbols[a], chemical_symbols[b]) for a, b in zip(lo.tolist(), hi.tolist()))
