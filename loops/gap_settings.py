"""GAP hyperparameters and the ``gap_fit`` command line (:class:`GAPSettings`).

Kept apart from :mod:`loops.gap` (the model that runs ``gap_fit`` and evaluates with quippy) so
that settings can be built, validated and fingerprinted without quippy; ``loops.gap``
re-exports everything here. Notes on gap_fit's quirks are in :mod:`loops.gap`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ase.data import atomic_numbers

from loops.errors import SetupError
from loops.fitting import DEFAULT_TIMEOUT_S, fmt_float, symbols_by_z
from loops.settings import FINGERPRINT, Rule, boolean, check_fields, integer, optional, positive_real
from oed.io import REF_ENERGY, REF_FORCES

#: Characters gap_fit's command-line parser treats as structure (never inside a value).
_GAP_SPECIAL = re.compile(r"[\s{}:=]")

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
