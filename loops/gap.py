"""Gaussian Approximation Potentials (GAP) fitted with ``gap_fit`` and evaluated with quippy.

A sparse GAP writes the energy of a configuration as a sum of atomic energies, each a sparse
Gaussian-process regression on the atom's SOAP environment (Bartók et al., PRL 104, 136403, 2010;
Bartók & Csányi, IJQC 115, 1051, 2015); SOAP is the smooth overlap of atomic positions with the
dot-product kernel ``k(q, q') = (q̂·q̂')^ζ`` (Bartók, Kondor & Csányi, PRB 87, 184115, 2013).

:class:`GAPSettings` holds the hyperparameters and builds the ``gap_fit`` command line;
:class:`GAPModel` writes the training file, runs ``gap_fit`` in a work directory and predicts
energies (eV) and forces (eV/Å) through ``quippy.potential.Potential``. quippy is imported lazily.

Notes on ``gap_fit`` (seen here, quippy-ase 0.10.3):

- one SOAP descriptor per central species, written with ``add_species=F``. With the default
  ``add_species=T`` gap_fit treats *every* descriptor as a template and makes one copy per species
  of the training set, overriding ``Z``: three per-species descriptors silently become nine.
- ``n_sparse`` is capped at the number of atomic environments of that species (DESIGN §5).
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
  the tail looks like a silent ``exit 1``; :class:`~loops.errors.ModelFitError` quotes the
  reason when there is one, the log's last lines, and the log's path.
- ``cur_points`` sparsification is random and gap_fit seeds from the clock by default: two fits
  of the same data differ unless ``rnd_seed`` is fixed (it must be >= 1; 0 aborts).
- the potential ``gap.xml`` needs the ``gap.xml.sparseX.*`` files written beside it; they are
  looked up relative to the directory of ``gap.xml``, so the files must stay together.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from loops.errors import ModelFitError, SetupError
from loops.models import species_e0s, training_frame
from oed.errors import InputError, NotFittedError, UnknownElementError
from oed.io import REF_ENERGY, REF_FORCES

#: Names of the files a fit writes into its work directory.
TRAIN_FILE = "train.xyz"
POTENTIAL_FILE = "gap.xml"
LOG_FILE = "gap_fit.log"
#: Lines of the gap_fit log quoted in a ModelFitError.
_LOG_TAIL_LINES = 20
#: Characters gap_fit's command-line parser treats as structure (never inside a value).
_GAP_SPECIAL = re.compile(r"[\s{}:=]")
#: Lines in which gap_fit (libAtoms / Fortran) states why it stopped.
_ABORT = re.compile(r"SYSTEM ABORT|^\s*ERROR\b|Traceback|^\s*STOP [1-9]|Segmentation fault|Killed")


def find_gap_fit() -> str:
    """Path of the ``gap_fit`` executable.

    Looks beside the running Python first (a virtual environment's ``bin``, which is not on
    ``PATH`` unless activated), then on ``PATH``.

    Raises
    ------
    SetupError
        If no ``gap_fit`` is found.
    """
    local = Path(sys.executable).parent / "gap_fit"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("gap_fit")
    if found:
        return found
    raise SetupError(
        "gap_fit executable not found (looked beside the Python interpreter "
        f"{sys.executable} and on PATH); install it with `pip install quippy-ase`"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _fmt(x: float) -> str:
    """A float as gap_fit reads it, without losing precision (``repr``: 1e-08, -13.56…)."""
    return repr(float(x))


def _symbols_by_z(species: Iterable[str]) -> list[str]:
    out = set()
    for s in species:
        if s not in atomic_numbers or s == "X":
            raise SetupError(f"unknown chemical symbol {s!r}")
        out.add(s)
    return sorted(out, key=atomic_numbers.__getitem__)


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

    Measured here (``benchmarks/gap_ethanol.py``): rMD17 ethanol (PBE/def2-SVP), trained on all
    1000 configurations of ``data/ethanol/train.xyz``, errors on all 1000 of ``test_MD.xyz``,
    E0s from ``isolated_atoms.xyz``; gap_fit of quippy-ase 0.10.3 on one core (it is
    single-threaded); fit time with the machine otherwise idle unless marked.

    ==============================  =========  ==========  ==========  ==========
    settings                        force MAE  energy MAE  fit time    peak memory
                                    meV/Å      meV/atom
    ==============================  =========  ==========  ==========  ==========
    ``BASELINE_SETTINGS``           30.9       0.63        8.2 min¹    4.6 GiB
    ``GAPSettings(n_sparse=1000)``  17.9       0.35        4.6 min     1.9 GiB
    ``GAPSettings()``               15.3       0.31        6.5 min     2.2 GiB
    ``GAPSettings(n_sparse=2000)``  13.6       0.27        8.5 min     2.8 GiB
    published GAP                   18.1
    ==============================  =========  ==========  ==========  ==========

    On small training sets (force MAE on 200 test_MD configurations, fit time): 25
    configurations 146 meV/Å in 2.4 s (baseline 239 meV/Å, 4.4 s); 50: 85 (132) meV/Å; 100: 52
    (68) meV/Å in 18 (39) s; 200: 32 (47) meV/Å in 49 (83) s.

    ¹ CPU time; 17 min wall on a shared machine. Published: Kovács et al., JCTC 17, 7696
    (2021), 1000 random configurations.

    What mattered (screened on every 5th test configuration): the number of sparse points
    (500 per species → 1500 H, 1000 C, 500 O: 31 → 21 meV/Å) and the radial resolution:
    with ``diagonal_radial`` and 3000 H, 2000 C, 1000 O sparse points, ``n_max`` 12 with
    ``atom_sigma`` 0.4 Å gave 15.8 meV/Å where ``n_max`` 8 with ``atom_sigma`` 0.5 gave 22.1;
    the full power spectrum at ``n_max`` 12 (4662 numbers per environment against 504) would
    cost nine times as much. Smaller gains: the 2-body term (0.5–0.9 meV/Å), ``force_sigma``
    0.01 and ``energy_sigma`` 0.0005 instead of 0.02 and 0.001 (0.6). No gain or a loss:
    ``zeta`` 2 or 6 instead of 4 (6 checked with gap_fit too), ``force_sigma`` 0.005, ``l_max``
    4 instead of 6 (+0.3 to +1.4), ``n_max`` 16 with ``atom_sigma`` 0.3 (+1.4), ``nu_R=1`` or
    ``R_mix``/``Z_mix`` compression instead of ``diagonal_radial`` (worse at equal cost).
    gap_fit's time grows as (sparse points) × (descriptor gradient entries) × (SOAP length)
    (module notes), so the baseline's 2100-long SOAP with 500 sparse points per species is both
    slower and less accurate than the defaults.

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
        Expected energy error, GAP's ``default_sigma`` energy entry (eV; gap_fit scales it
        with the size of the configuration).
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
        Keep only the radially diagonal (n = n') terms of the SOAP power spectrum (quippy's
        ``diagonal_radial``; Darby, Kermode & Csányi, npj Comput. Mater. 8, 166, 2022). The
        descriptor shrinks from ``(l_max+1)·(S·n_max)(S·n_max+1)/2`` to
        ``(l_max+1)·n_max·S(S+1)/2`` numbers for S species (2100 to 336 for ethanol at
        n_max 8, l_max 6), and gap_fit's time with it, which pays for a finer radial basis
        (larger ``n_max``, smaller ``atom_sigma``) and more sparse points.
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`~loops.errors.SetupError` naming the first bad one."""
        for name in ("cutoff", "cutoff_transition_width", "atom_sigma", "delta",
                     "energy_sigma", "force_sigma", "sparse_jitter", "two_body_theta"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise SetupError(f"GAPSettings.{name} must be a positive finite number, got {value!r}")
        value = self.two_body_delta
        if value is not None and (not _is_real(value) or not math.isfinite(value) or value <= 0):
            raise SetupError(f"GAPSettings.two_body_delta must be None or a positive finite number, got {value!r}")
        if not isinstance(self.diagonal_radial, (bool, np.bool_)):
            raise SetupError(f"GAPSettings.diagonal_radial must be True or False, got {self.diagonal_radial!r}")
        for name, minimum in (("n_max", 1), ("l_max", 0), ("zeta", 1), ("n_sparse", 1), ("two_body_n_sparse", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise SetupError(f"GAPSettings.{name} must be an integer >= {minimum}, got {value!r}")
        if self.rnd_seed is not None and (not _is_int(self.rnd_seed) or self.rnd_seed < 1):
            raise SetupError(f"GAPSettings.rnd_seed must be None or an integer >= 1, got {self.rnd_seed!r}")
        if self.cutoff_transition_width >= self.cutoff:
            raise SetupError(
                f"GAPSettings.cutoff_transition_width ({self.cutoff_transition_width}) must be "
                f"smaller than cutoff ({self.cutoff})"
            )
        if not isinstance(self.sparse_method, str) or not self.sparse_method or _GAP_SPECIAL.search(
            self.sparse_method
        ):
            raise SetupError(
                f"GAPSettings.sparse_method must be one word, got {self.sparse_method!r}"
            )

    def descriptor(self, z: int, species_z: Sequence[int], n_sparse: int) -> str:
        """The SOAP descriptor string for central species ``z`` (one entry of ``gap={...}``)."""
        zs = " ".join(str(int(s)) for s in species_z)
        return (
            f"soap l_max={self.l_max} n_max={self.n_max} cutoff={_fmt(self.cutoff)} "
            f"cutoff_transition_width={_fmt(self.cutoff_transition_width)} "
            f"atom_sigma={_fmt(self.atom_sigma)} zeta={self.zeta} delta={_fmt(self.delta)} "
            f"covariance_type=dot_product sparse_method={self.sparse_method} "
            f"n_sparse={int(n_sparse)} add_species=F n_species={len(species_z)} "
            f"species_Z={{{{{zs}}}}}{' diagonal_radial=T' if self.diagonal_radial else ''} Z={int(z)}"
        )

    def two_body_descriptor(self, z1: int, z2: int, n_sparse: int) -> str:
        """The ``distance_2b`` descriptor string for the species pair ``(z1, z2)`` (one entry of ``gap={...}``)."""
        if self.two_body_delta is None:
            raise SetupError("GAPSettings.two_body_delta is None: this GAP has no 2-body term")
        return (
            f"distance_2b Z1={int(z1)} Z2={int(z2)} cutoff={_fmt(self.cutoff)} "
            f"cutoff_transition_width={_fmt(self.cutoff_transition_width)} covariance_type=ard_se "
            f"delta={_fmt(self.two_body_delta)} theta_uniform={_fmt(self.two_body_theta)} "
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
            as gap_fit will see them (relative to its working directory). No whitespace,
            braces, colons or ``=``: gap_fit splits its command line on them.
        e0s
            Isolated-atom energy in eV per element symbol; every one of ``species`` needed.
        species
            Element symbols of the training set: one SOAP descriptor per symbol, and all of
            them in each descriptor's ``species_Z``.
        n_envs
            Number of atomic environments of each species in the training set; ``n_sparse``
            is capped at it. ``None``: no cap.
        pair_counts
            Used only with a 2-body term (``two_body_delta`` set): the number of atom pairs
            within ``cutoff`` in the training set for each pair of symbols (either order).
            Pairs with fewer than two get no 2-body descriptor (with none gap_fit exits 1
            without a message, with one its uniform sparsification aborts) and
            ``two_body_n_sparse`` is capped at the count. ``None``: every pair of
            ``species``, uncapped.
        executable
            argv[0].

        Returns
        -------
        list of str, ready for :func:`subprocess.run`.
        """
        self.validate()
        symbols = _symbols_by_z(species)
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
        e0 = ":".join(f"{s}:{_fmt(e0s[s])}" for s in symbols)
        return [
            executable,
            f"at_file={os.fspath(train_file)}",
            f"gp_file={os.fspath(gp_file)}",
            f"energy_parameter_name={REF_ENERGY}",
            f"force_parameter_name={REF_FORCES}",
            f"e0={{{e0}}}",
            f"default_sigma={{{_fmt(self.energy_sigma)} {_fmt(self.force_sigma)} 0.0 0.0}}",
            f"sparse_jitter={_fmt(self.sparse_jitter)}",
            f"rnd_seed={-1 if self.rnd_seed is None else int(self.rnd_seed)}",
            "gap={" + " : ".join(descriptors) + "}",
        ]


#: The earlier defaults (SOAP n_max 8, full power spectrum, 500 sparse points per species,
#: σ 1 meV/atom and 20 meV/Å, no 2-body term): 30.9 meV/Å on rMD17 ethanol with 1000
#: configurations where the defaults give 15.3. ``GAPSettings(**BASELINE_SETTINGS)``.
BASELINE_SETTINGS: Mapping[str, Any] = MappingProxyType({
    "n_max": 8,
    "atom_sigma": 0.5,
    "diagonal_radial": False,
    "n_sparse": 500,
    "energy_sigma": 0.001,
    "force_sigma": 0.02,
    "two_body_delta": None,
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
        try:
            e0_by_z[int(e0.get("Z"))] = float(e0.get("value"))
        except (TypeError, ValueError):
            continue
    species = tuple(chemical_symbols[z] for z in sorted(zs))
    e0s = {chemical_symbols[z]: e0_by_z.get(z, 0.0) for z in sorted(zs)}
    n_train = None
    for data in root.iter("XYZ_data"):
        n_train = (n_train or 0) + (data.text or "").count("Properties=")
    return species, e0s, n_train


class GAPModel:
    """A sparse GAP potential fitted by ``gap_fit`` (Bartók et al., PRL 104, 136403, 2010).

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
    """

    #: The settings dataclass (see :mod:`loops.models`).
    settings_class = GAPSettings

    def __init__(self, settings: GAPSettings | None = None) -> None:
        self.settings = settings

    # -- pickling: the quippy object stays behind ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_potential", None)
        return state

    def _check_fitted(self) -> None:
        if not hasattr(self, "potential_file_"):
            raise NotFittedError("this GAPModel is not fitted yet: call fit() or GAPModel.load() first")

    def fit(
        self,
        frames: Sequence[Atoms],
        *,
        e0s: Mapping[str, float],
        workdir: str | os.PathLike,
    ) -> GAPModel:
        """Fit the potential with ``gap_fit``.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Training configurations, each with a reference energy (eV) and forces (eV/Å) under
            ``REF_energy`` / ``REF_forces`` or plain ``energy`` / ``forces``.
        e0s : mapping of str to float
            Isolated-atom energy in eV for every element of ``frames``.
        workdir : path
            Directory (created if needed) receiving ``train.xyz``, ``gap_fit.log``, ``gap.xml``
            and the ``gap.xml.sparseX.*`` files; an earlier potential there is removed first.

        Returns
        -------
        self

        Raises
        ------
        InputError
            No frames, or a frame without a finite reference energy and forces of shape
            ``(n_atoms, 3)`` (its index is named).
        SetupError
            Bad settings, an element without E0, or no ``gap_fit`` executable.
        ModelFitError
            gap_fit exited non-zero or wrote no potential (gap_fit's reason, when it gives one,
            and the log's last lines are quoted); the model is then unfitted.
        """
        settings = self.settings if self.settings is not None else GAPSettings()
        settings.validate()
        frames = list(frames)
        if not frames:
            raise InputError("no training configurations given to GAPModel.fit")
        train: list[Atoms] = []
        n_envs: Counter[str] = Counter()
        pair_counts: Counter[tuple[str, str]] = Counter()
        for i, atoms in enumerate(frames):
            clean = training_frame(i, atoms)
            if clean.cell.rank < 3:
                if clean.pbc.any():
                    raise InputError(
                        f"training configuration {i} is periodic along {clean.pbc.tolist()} but its "
                        "cell is not three-dimensional"
                    )
                # gap_fit ignores the energy of a configuration written without a Lattice.
                side = float(np.ptp(clean.positions, axis=0).max()) + 2.0 * settings.cutoff + 1.0
                clean.cell = np.eye(3) * side
            if "config_type" in atoms.info:
                clean.info["config_type"] = atoms.info["config_type"]
            train.append(clean)
            n_envs.update(atoms.get_chemical_symbols())
            if settings.two_body_delta is not None:
                pair_counts.update(_pairs_within(clean, settings.cutoff))
        e0_used = species_e0s(n_envs, e0s)
        species = list(e0_used)
        argv = settings.command(
            TRAIN_FILE, POTENTIAL_FILE, e0_used, species, n_envs=n_envs,
            pair_counts=pair_counts if settings.two_body_delta is not None else None,
            executable=find_gap_fit(),
        )

        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for name in ("_potential", "potential_file_", "species_", "e0s_", "n_train_"):
            self.__dict__.pop(name, None)  # a failed refit leaves an unfitted model, not a stale one
        # A stale potential must not survive a failed fit; a stale index must not describe a new file.
        stale = [work / POTENTIAL_FILE, work / (TRAIN_FILE + ".idx"), *work.glob(POTENTIAL_FILE + ".sparseX.*")]
        for path in stale:
            path.unlink(missing_ok=True)
        _write_extxyz_atomic(work / TRAIN_FILE, train)

        log_path = work / LOG_FILE
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT, check=False)
            except OSError as exc:
                raise SetupError(f"cannot run {argv[0]}: {exc}") from exc
        potential = work / POTENTIAL_FILE
        if proc.returncode != 0 or not potential.is_file():
            why = (
                f"gap_fit exited with status {proc.returncode}"
                if proc.returncode != 0
                else "gap_fit exited 0 but wrote no potential"
            )
            raise ModelFitError(f"{why} (work directory {work}).\n{_log_report(log_path)}")

        self._potential = None
        self.potential_file_ = potential
        self.species_ = tuple(species)
        self.e0s_ = e0_used
        self.n_train_ = len(train)
        return self

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
        model._potential = None
        model.potential_file_ = path
        model.species_ = species
        model.e0s_ = e0s
        model.n_train_ = n_train
        return model

    def _quippy_potential(self) -> Any:
        pot = getattr(self, "_potential", None)
        if pot is None:
            try:
                from quippy.potential import Potential  # lazy: quippy is heavy
            except ImportError as exc:
                raise SetupError(
                    "quippy is not importable; install it with `pip install quippy-ase`"
                ) from exc
            try:
                pot = Potential(param_filename=str(self.potential_file_))
            except RuntimeError as exc:
                raise InputError(f"quippy cannot load GAP potential {self.potential_file_}: {exc}") from exc
            self._potential = pot
        return pot

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
        NotFittedError
            If the model is neither fitted nor loaded.
        UnknownElementError
            If a configuration holds an element the model was not fitted on.
        """
        self._check_fitted()
        frames = list(frames)
        known = set(self.species_)
        for i, atoms in enumerate(frames):
            unknown = sorted(set(atoms.get_chemical_symbols()) - known, key=atomic_numbers.__getitem__)
            if unknown:
                raise UnknownElementError(
                    f"configuration {i} holds element(s) {', '.join(unknown)} that the GAP model "
                    f"was not fitted on (fitted on {', '.join(self.species_)})"
                )
        pot = self._quippy_potential()
        energies = np.empty(len(frames), dtype=float)
        forces: list[np.ndarray] = []
        iterator: Iterable[tuple[int, Atoms]] = enumerate(frames)
        if progress:
            from rich.progress import track

            iterator = track(iterator, total=len(frames), description="GAP predict")
        for i, atoms in iterator:
            work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            work.calc = pot
            energies[i] = float(work.get_potential_energy())
            forces.append(np.array(work.get_forces(), dtype=float))
            work.calc = None
        return energies, forces

    def predict_variance(self, frames: Sequence[Atoms]) -> np.ndarray:
        """GAP predictive variance of each configuration's energy, summed over its atoms (eV²).

        quippy's ``local_gap_variance`` is the sparse-GP posterior variance of each atomic energy
        (Bartók & Csányi, IJQC 115, 1051, 2015, §4); their sum ignores the covariance between
        atoms, the usual per-configuration uncertainty of a GAP in active learning.

        Returns
        -------
        ndarray, shape (n_frames,)

        Raises
        ------
        NotFittedError, UnknownElementError
            As :meth:`predict`.
        """
        self._check_fitted()
        frames = list(frames)
        known = set(self.species_)
        for i, atoms in enumerate(frames):
            unknown = sorted(set(atoms.get_chemical_symbols()) - known, key=atomic_numbers.__getitem__)
            if unknown:
                raise UnknownElementError(f"configuration {i} holds element(s) {', '.join(unknown)} that the "
                                          f"GAP model was not fitted on")
        from quippy.potential import Potential

        # A second quippy object with the variance switched on: computing it costs more than
        # energies and forces, so the plain predictor stays without it.
        pot = Potential(param_filename=str(self.potential_file_), calc_args="local_gap_variance")
        out = np.empty(len(frames), dtype=float)
        for i, atoms in enumerate(frames):
            work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            work.calc = pot
            work.get_potential_energy()
            out[i] = float(np.sum(pot.extra_results["atoms"]["local_gap_variance"]))
            work.calc = None
        return out


def _pairs_within(atoms: Atoms, cutoff: float) -> Counter[tuple[str, str]]:
    """Atom pairs closer than ``cutoff`` (Å), counted once each, by symbols in atomic-number order."""
    from ase.neighborlist import neighbor_list  # lazy

    i, j = neighbor_list("ij", atoms, cutoff)
    keep = i <= j  # i == j only between periodic images of one atom
    z = atoms.numbers
    lo = np.minimum(z[i[keep]], z[j[keep]])
    hi = np.maximum(z[i[keep]], z[j[keep]])
    return Counter((chemical_symbols[a], chemical_symbols[b]) for a, b in zip(lo.tolist(), hi.tolist()))


def _write_extxyz_atomic(path: Path, frames: Sequence[Atoms]) -> None:
    """Write extxyz to a temporary file beside ``path``, then move it into place."""
    from ase.io import write  # lazy: ase.io pulls many format modules

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            write(fh, list(frames), format="extxyz")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _log_report(log_path: Path, n: int = _LOG_TAIL_LINES) -> str:
    """gap_fit's own complaint and the last ``n`` lines of its log.

    gap_fit writes its ``SYSTEM ABORT`` line to stderr unbuffered and its report to stdout
    buffered, so in a combined log the reason sits near the *top*, not in the tail.
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_path})"
    reasons = [ln.strip() for ln in lines if _ABORT.search(ln)]
    tail = [ln for ln in lines if ln.strip()][-n:]
    text = f"Last {len(tail)} lines of {log_path}:\n" + "\n".join(tail)
    if reasons:
        return "gap_fit says: " + " | ".join(reasons) + "\n" + text
    return text + (
        "\n(gap_fit gave no reason — it sometimes exits 1 without one: check the settings, "
        f"e.g. sparse_method, n_sparse, species without data, and read the full log {log_path})"
    )
