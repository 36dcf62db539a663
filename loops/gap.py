"""Gaussian Approximation Potentials (GAP) fitted with ``gap_fit`` and evaluated with quippy.

A sparse GAP writes the energy of a configuration as a sum of atomic energies, each a sparse
Gaussian-process regression on the atom's SOAP environment (Bartók et al., PRL 104, 136403, 2010;
Bartók & Csányi, IJQC 115, 1051, 2015); SOAP is the smooth overlap of atomic positions with the
dot-product kernel ``k(q, q') = (q̂·q̂')^ζ`` (Bartók, Kondor & Csányi, PRB 87, 184115, 2013).

:class:`GAPSettings` holds the hyperparameters and builds the ``gap_fit`` command line;
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
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from loops.errors import SetupError
from loops.fitting import (
    DEFAULT_TIMEOUT_S, FitPlan, FitProgram, SubprocessModel, check_elements, find_program, fmt_float,
    species_e0s, symbols_by_z,
)
from loops.settings import FINGERPRINT, Rule, boolean, check_fields, integer, optional, positive_real
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

    from oed.design import FeatureSpec

#: Names of the files a fit writes into its work directory.
TRAIN_FILE = "train.xyz"
POTENTIAL_FILE = "gap.xml"
LOG_FILE = "gap_fit.log"
#: Characters gap_fit's command-line parser treats as structure (never inside a value).
_GAP_SPECIAL = re.compile(r"[\s{}:=]")
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


#: What each GAPSettings field must be (:func:`loops.settings.check_fields`).
_RULES: Mapping[str, Rule] = MappingProxyType({
    **{name: positive_real() for name in ("cutoff", "cutoff_transition_width", "atom_sigma", "delta",
                                          "energy_sigma", "force_sigma", "sparse_jitter", "two_body_theta")},
    "two_body_delta": optional(positive_real()),
    "diagonal_radial": boolean(),
    **{name: integer(minimum) for name, minimum in (("n_max", 1), ("l_max", 0), ("zeta", 1), ("n_sparse", 1),
                                                     ("two_body_n_sparse", 1))},
    "rnd_seed": optional(integer(1)),  # gap_fit aborts on 0
    "sparse_method": Rule("one word", lambda v: isinstance(v, str) and v != "" and not _GAP_SPECIAL.search(v)),
    "timeout_s": optional(positive_real()),
})


@dataclass(frozen=True)
class GAPSettings:
    """Hyperparameters of a sparse GAP with one SOAP descriptor per central species.

    The model is the sparse GAP of Bartók et al. (PRL 104, 136403, 2010) as reviewed by
    Bartók & Csányi (IJQC 115, 1051, 2015), on the SOAP descriptor of Bartók, Kondor & Csányi
    (PRB 87, 184115, 2013) with the dot-product kernel raised to ``zeta``. The defaults were tuned
    on rMD17 ethanol (below): a finer radial basis (``n_max`` 12, ``atom_sigma`` 0.4 Å) made
    affordable by ``diagonal_radial``, up to 1500 sparse points per species, expected errors of
    0.5 meV/atom and 10 meV/Å, and a 2-body term. :data:`BASELINE_SETTINGS` are the earlier
    defaults (full SOAP, ``n_max`` 8, 500 sparse points, no 2-body term), kept for comparison.

    Measured on rMD17 ethanol with 1000 training configurations (fit times, memory and smaller
    sets in :mod:`loops.models`): 15.3 meV/Å force MAE with the defaults, 30.9 with the
    baseline, 18.1 for the published GAP (Kovács et al., JCTC 17, 7696, 2021).

    What mattered most: the number of sparse points and the radial resolution (``n_max`` 12
    with ``atom_sigma`` 0.4 Å, affordable with ``diagonal_radial``); the screen of the others is
    in :mod:`loops.models`.

    Parameters
    ----------
    cutoff : float, default 5.0
        SOAP cutoff radius in Å.
    cutoff_transition_width : float, default 1.0
        Width in Å of the smooth switch-off at the cutoff; smaller than ``cutoff``.
    n_max : int, default 12
        Number of radial basis functions.
    l_max : int, default 6
        Maximum angular momentum of the spherical harmonics (0 allowed).
    atom_sigma : float, default 0.4
        Width in Å of the Gaussian smearing of each neighbour.
    zeta : int, default 4
        Exponent of the dot-product kernel.
    delta : float, default 1.0
        Energy scale of the kernel (eV): the prior standard deviation of an atomic energy.
    n_sparse : int, default 1500
        Sparse (representative) environments per central species, capped at the number of
        environments of that species in the training set.
    sparse_method : str, default "cur_points"
        How gap_fit picks the sparse environments (passed through unchecked: gap_fit judges it).
    energy_sigma : float, default 0.0005
        Expected energy error per atom, GAP's ``default_sigma`` energy entry (eV; gap_fit
        multiplies it by √N for a configuration of N atoms).
    force_sigma : float, default 0.01
        Expected error of a force component in eV/Å (``default_sigma`` force entry).
    sparse_jitter : float, default 1e-8
        Diagonal regulariser added to the sparse covariance matrix.
    rnd_seed : int or None, default 1
        Seed (>= 1; gap_fit aborts on 0) of gap_fit's random numbers: ``cur_points`` picks
        sparse points at random, so the same data and settings give the same potential only
        with a fixed seed. ``None``: seeded from the clock (gap_fit's own default); two such
        fits of 20 ethanol configurations differed by up to 0.3 eV in predicted energies.
    diagonal_radial : bool, default True
        Keep only the radially diagonal (n = n') terms of the SOAP power spectrum (Darby,
        Kermode & Csányi, npj Comput. Mater. 8, 166, 2022): ``(l_max+1)·n_max·S(S+1)/2``
        numbers for S species instead of ``(l_max+1)·(S·n_max)(S·n_max+1)/2`` (336 against
        2100 for ethanol at n_max 8, l_max 6), and gap_fit's time with them, which pays for a
        finer radial basis and more sparse points.
    two_body_delta : float or None, default 1.0
        Energy scale (eV) of an added 2-body term: one ``distance_2b`` descriptor (squared-
        exponential kernel on the interatomic distance, within ``cutoff`` and
        ``cutoff_transition_width``) per species pair found within the cutoff in the training
        set. ``None``: SOAP only.
    two_body_theta : float, default 0.5
        Length scale (Å) of the 2-body kernel.
    two_body_n_sparse : int, default 20
        Sparse points (spread uniformly over the distances seen) per 2-body descriptor, capped
        at the number of pairs of that kind.
    timeout_s : float or None, default 21600 (6 h)
        Time limit of one gap_fit run in seconds (:data:`loops.fitting.DEFAULT_TIMEOUT_S`);
        past it gap_fit is killed and the fit fails with :class:`~loops.errors.ModelFitError`.
        ``None``: no limit. Changes no result, so run fingerprints leave it out
        (:func:`loops.settings.fingerprint_fields`).

    Raises
    ------
    SetupError
        On construction, for a non-positive number, an integer below its minimum or a
        ``sparse_method`` that is not a single token.
    """

    cutoff: float = 5.0
    cutoff_transition_width: float = 1.0
    n_max: int = 12
    l_max: int = 6
    atom_sigma: float = 0.4
    zeta: int = 4
    delta: float = 1.0
    n_sparse: int = 1500
    sparse_method: str = "cur_points"
    energy_sigma: float = 0.0005
    force_sigma: float = 0.01
    sparse_jitter: float = 1e-8
    rnd_seed: int | None = 1
    diagonal_radial: bool = True
    two_body_delta: float | None = 1.0
    two_body_theta: float = 0.5
    two_body_n_sparse: int = 20
    timeout_s: float | None = field(default=DEFAULT_TIMEOUT_S, metadata={FINGERPRINT: False})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`~loops.errors.SetupError` naming the first bad one."""
        check_fields(self, _RULES, error=SetupError)
        if self.cutoff_transition_width >= self.cutoff:
            raise SetupError(
                f"GAPSettings.cutoff_transition_width ({self.cutoff_transition_width}) must be "
                f"smaller than cutoff ({self.cutoff})"
            )

    def descriptor(self, z: int, species_z: Sequence[int], n_sparse: int) -> str:
        """The SOAP descriptor string for central species ``z`` (one entry of ``gap={...}``)."""
        zs = " ".join(str(int(s)) for s in species_z)
        return (
            f"soap l_max={self.l_max} n_max={self.n_max} cutoff={fmt_float(self.cutoff)} "
            f"cutoff_transition_width={fmt_float(self.cutoff_transition_width)} "
            f"atom_sigma={fmt_float(self.atom_sigma)} zeta={self.zeta} delta={fmt_float(self.delta)} "
            f"covariance_type=dot_product sparse_method={self.sparse_method} "
            f"n_sparse={int(n_sparse)} add_species=F n_species={len(species_z)} "
            f"species_Z={{{{{zs}}}}}{' diagonal_radial=T' if self.diagonal_radial else ''} Z={int(z)}"
        )

    def two_body_descriptor(self, z1: int, z2: int, n_sparse: int) -> str:
        """The ``distance_2b`` descriptor string for the species pair ``(z1, z2)`` (one entry of ``gap={...}``)."""
        if self.two_body_delta is None:
            raise SetupError("GAPSettings.two_body_delta is None: this GAP has no 2-body term")
        return (
            f"distance_2b Z1={int(z1)} Z2={int(z2)} cutoff={fmt_float(self.cutoff)} "
            f"cutoff_transition_width={fmt_float(self.cutoff_transition_width)} covariance_type=ard_se "
            f"delta={fmt_float(self.two_body_delta)} theta_uniform={fmt_float(self.two_body_theta)} "
            f"sparse_method=uniform n_sparse={int(n_sparse)} add_species=F"
        )

    def command(
        self,
        train_file: str | os.PathLike,
        gp_file: str | os.PathLike,
        e0s: Mapping[str, float],
        species: Iterable[str],
        *,
        n_envs: Mapping[str, int] | None = None,
        pair_counts: Mapping[tuple[str, str], int] | None = None,
        executable: str = "gap_fit",
    ) -> list[str]:
        """The ``gap_fit`` argv (executable first) for a training file.

        Parameters
        ----------
        train_file, gp_file
            Training extxyz (labels under ``REF_energy`` / ``REF_forces``) and output potential,
            relative to gap_fit's working directory; no whitespace, braces, ``:`` or ``=``
            (gap_fit splits its command line on them).
        e0s
            Isolated-atom energy in eV per element symbol; every one of ``species`` needed.
        species
            Element symbols of the training set: one SOAP descriptor each, all of them in each
            descriptor's ``species_Z``.
        n_envs
            Atomic environments of each species in the training set: caps ``n_sparse``
            (``None``: no cap).
        pair_counts
            With a 2-body term: atom pairs within ``cutoff`` per pair of symbols (either order).
            Pairs with fewer than two get no 2-body descriptor (none: gap_fit exits 1 without a
            message; one: its uniform sparsification aborts); ``two_body_n_sparse`` is capped at
            the count. ``None``: every pair of ``species``, uncapped.
        executable
            argv[0].

        Returns
        -------
        list of str
        """
        self.validate()
        symbols = symbols_by_z(species)
        if not symbols:
            raise SetupError("no species given to GAPSettings.command")
        missing = [s for s in symbols if s not in e0s]
        if missing:
            raise SetupError(f"no isolated-atom energy (E0) for element(s) {', '.join(missing)}")
        for name, path in (("train_file", train_file), ("gp_file", gp_file)):
            text = os.fspath(path)
            if not text or _GAP_SPECIAL.search(text):
                raise SetupError(
                    f"{name} {text!r} cannot be passed to gap_fit (no whitespace, braces, ':' or '=')"
                )
        species_z = [atomic_numbers[s] for s in symbols]
        descriptors = []
        for s, z in zip(symbols, species_z):
            n = self.n_sparse
            if n_envs is not None:
                if s not in n_envs or int(n_envs[s]) < 1:
                    raise SetupError(f"n_envs has no environment count for element {s}")
                n = min(n, int(n_envs[s]))
            descriptors.append(self.descriptor(z, species_z, n))
        if self.two_body_delta is not None:
            counts: dict[tuple[str, str], int] = {}
            if pair_counts is not None:
                for (a, b), count in pair_counts.items():
                    if a not in symbols or b not in symbols:
                        continue
                    key = tuple(sorted((a, b), key=atomic_numbers.__getitem__))
                    counts[key] = counts.get(key, 0) + int(count)
            two_body = []
            for i, a in enumerate(symbols):
                for b in symbols[i:]:
                    n = self.two_body_n_sparse
                    if pair_counts is not None:
                        # gap_fit's uniform sparsification spans the distances seen: one pair spans
                        # nothing and aborts ("select_uniform: Descriptor is too large"), none exits 1
                        if counts.get((a, b), 0) < 2:
                            continue
                        n = min(n, counts[(a, b)])
                    two_body.append(self.two_body_descriptor(atomic_numbers[a], atomic_numbers[b], n))
            descriptors = two_body + descriptors
        e0 = ":".join(f"{s}:{fmt_float(e0s[s])}" for s in symbols)
        return [
            executable, f"at_file={os.fspath(train_file)}", f"gp_file={os.fspath(gp_file)}",
            f"energy_parameter_name={REF_ENERGY}", f"force_parameter_name={REF_FORCES}", f"e0={{{e0}}}",
            f"default_sigma={{{fmt_float(self.energy_sigma)} {fmt_float(self.force_sigma)} 0.0 0.0}}",
            f"sparse_jitter={fmt_float(self.sparse_jitter)}",
            f"rnd_seed={-1 if self.rnd_seed is None else int(self.rnd_seed)}",
            "gap={" + " : ".join(descriptors) + "}",
        ]


#: The earlier defaults (SOAP n_max 8, full power spectrum, 500 sparse points per species,
#: σ 1 meV/atom and 20 meV/Å, no 2-body term): 30.9 meV/Å on rMD17 ethanol with 1000
#: configurations where the defaults give 15.3. ``GAPSettings(**BASELINE_SETTINGS)``.
BASELINE_SETTINGS: Mapping[str, Any] = MappingProxyType({
    "n_max": 8, "atom_sigma": 0.5, "diagonal_radial": False, "n_sparse": 500, "energy_sigma": 0.001,
    "force_sigma": 0.02, "two_body_delta": None,
})


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
