"""SOAP features of atoms and structures, with their gradients (dscribe or quippy).

The energy-only design feature of a configuration A is the sum of its atoms'
SOAP vectors, φ(A) = Σ_i q̂_i (docs/design.md §1): energies are sums of atomic
terms, so a linear model on φ is the linear-in-parameters view of a SOAP-GAP
with a dot-product kernel. Atom vectors are unit-normalised first (q̂), as in
the GAP kernel k(q, q') = (q̂·q̂')^ζ, so every atom carries the same weight.
Force-aware design needs ∂q̂_i/∂r_a as well (:meth:`per_atom_gradients`).

Two back-ends share one small interface (``fit``, ``per_atom``,
``per_atom_gradients``, ``per_structure``, ``get_params``, ``species_``,
``n_features_``) and a registry, :data:`DESCRIPTORS` / :func:`make_descriptor`:

- ``"dscribe"`` (:class:`SOAPDescriptor`): orthonormalised GTO radial basis,
  no cutoff function;
- ``"quippy"`` (:class:`QuippySOAPDescriptor`): the descriptor ``gap_fit``
  itself uses (one per central species, smooth cosine switch-off at the
  cutoff), so its features are those of the GAP models in :mod:`loops.gap`.

The two radial bases differ, so their vectors are not interchangeable (not
even up to a permutation); each is rotation, translation and permutation
invariant on its own.

Sources: Bartók, Kondor & Csányi, "On representing chemical environments",
Phys. Rev. B 87, 184115 (2013), doi:10.1103/PhysRevB.87.184115; dscribe:
Himanen et al., Comput. Phys. Commun. 247, 106949 (2020),
doi:10.1016/j.cpc.2019.106949; QUIP/quippy: https://github.com/libAtoms/QUIP
(Bartók et al., Phys. Rev. Lett. 104, 136403 (2010),
doi:10.1103/PhysRevLett.104.136403).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from oed.errors import InputError, NotFittedError, UnknownElementError

#: Floor on a SOAP vector's norm before dividing by it (an empty environment).
_TINY = 1e-300


def species_of(frames: Sequence[Atoms]) -> list[str]:
    """Chemical symbols present in ``frames``, sorted by atomic number."""
    zs = sorted({int(z) for atoms in frames for z in atoms.numbers})
    return [chemical_symbols[z] for z in zs]


def normalise_rows(x: np.ndarray, dx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-normalise SOAP vectors and, given them, their gradients.

    With q̂ = x/|x|, the chain rule gives ∂q̂ = (I − q̂ q̂ᵀ) ∂x / |x|: the part of
    ∂x along q̂ only rescales x and drops out.

    Parameters
    ----------
    x : ndarray, shape (n_atoms, d)
    dx : ndarray, shape (n_atoms, n_atoms, 3, d), optional
        ∂x_i/∂r_{a,α} (centre i, moved atom a, direction α), in 1/Å.

    Returns
    -------
    q : ndarray, shape (n_atoms, d)
    dq : ndarray, shape (n_atoms, n_atoms, 3, d), or None without ``dx``
    """
    norm = np.maximum(np.linalg.norm(x, axis=1), _TINY)
    q = x / norm[:, None]
    if dx is None:
        return q, None
    along = np.einsum("iakd,id->iak", dx, q)
    dq = (dx - along[..., None] * q[:, None, None, :]) / norm[:, None, None, None]
    return q, dq


class _SOAPBase:
    """What both back-ends share: parameters, validation, normalisation, sums.

    A back-end implements ``_build(species)`` (returns ``n_features``),
    ``_raw(frames)`` (per-atom vectors, atom order) and ``_raw_gradients(atoms)``.
    """

    #: Registry name of the back-end (keys caches together with get_params()).
    name = ""

    def __init__(
        self,
        *,
        r_cut: float = 5.0,
        n_max: int = 8,
        l_max: int = 6,
        sigma: float = 0.5,
        species: Sequence[str] | None = None,
        normalize: bool = True,
    ) -> None:
        self.r_cut = r_cut
        self.n_max = n_max
        self.l_max = l_max
        self.sigma = sigma
        self.species = species
        self.normalize = normalize

    def get_params(self) -> dict:
        """Settings that define the features (used to key on-disk caches)."""
        return {
            "r_cut": self.r_cut,
            "n_max": self.n_max,
            "l_max": self.l_max,
            "sigma": self.sigma,
            "species": list(self.species) if self.species is not None else None,
            "normalize": self.normalize,
        }

    def fit(self, frames: Sequence[Atoms]):
        """Fix the covered species (from ``frames`` unless given) and build the back-end.

        Returns
        -------
        self

        Raises
        ------
        InputError
            For a non-positive cutoff or width, ``n_max < 1``, ``l_max < 0``,
            or an unknown element symbol in ``species``.
        """
        if not self.r_cut > 0 or not self.sigma > 0:
            raise InputError(f"SOAP r_cut and sigma must be > 0, got {self.r_cut}, {self.sigma}")
        if int(self.n_max) < 1 or int(self.l_max) < 0:
            raise InputError(f"SOAP needs n_max >= 1 and l_max >= 0, got {self.n_max}, {self.l_max}")
        if self.species is None:
            species = species_of(frames)
        else:
            unknown = [s for s in self.species if s not in atomic_numbers]
            if unknown:
                raise InputError(f"unknown element symbol(s) in species: {unknown}")
            species = sorted(set(self.species), key=atomic_numbers.get)
        if not species:
            raise InputError("SOAP needs at least one species")
        self.n_features_ = int(self._build(species))
        self.species_ = species
        return self

    def check_frames(self, frames: Sequence[Atoms]) -> None:
        """Check that the descriptor is fitted and covers every configuration.

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        InputError
            For a periodic structure (not supported yet).
        UnknownElementError
            For an element outside ``species_`` (names the configuration).
        """
        if not hasattr(self, "species_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(frames) first")
        if any(atoms.pbc.any() for atoms in frames):
            raise InputError("periodic structures are not supported yet: set pbc=False (molecules)")
        covered = set(self.species_)
        for i, atoms in enumerate(frames):
            missing = sorted(set(atoms.get_chemical_symbols()) - covered)
            if missing:
                raise UnknownElementError(
                    f"configuration {i} contains {', '.join(missing)}, which the SOAP "
                    f"descriptor does not cover (species: {', '.join(self.species_)})"
                )

    def per_atom(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        """SOAP vector of every atom, in atom order (unit-normalised if ``normalize``).

        Returns
        -------
        list of ndarray, one per configuration, shape ``(n_atoms_i, n_features_)``.

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
            See :meth:`check_frames`.
        """
        self.check_frames(frames)
        if not frames:
            return []
        feats = self._raw(frames)
        return [normalise_rows(x)[0] for x in feats] if self.normalize else feats

    def per_atom_gradients(self, frames: Sequence[Atoms]) -> list[tuple[np.ndarray, np.ndarray]]:
        """SOAP vectors and their derivatives with respect to every atom position.

        Returns
        -------
        list of (q, dq), one per configuration, with
            q : ndarray, shape ``(n_atoms, n_features_)``, as :meth:`per_atom`;
            dq : ndarray, shape ``(n_atoms, n_atoms, 3, n_features_)``, in 1/Å:
            ``dq[i, a, α] = ∂q_i/∂r_{a,α}`` (centre i, moved atom a, Cartesian
            direction α); the derivative of the normalised q̂ when ``normalize``.

        Memory grows as n_atoms² · 3 · n_features_ per configuration (4 MB for a
        9-atom molecule at n_max=8, l_max=6 and 3 species): pass chunks of a
        large pool, not all of it.

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
            See :meth:`check_frames`.
        """
        self.check_frames(frames)
        out = []
        for atoms in frames:
            x, dx = self._raw_gradients(atoms)
            out.append(normalise_rows(x, dx) if self.normalize else (x, dx))
        return out

    def per_structure(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Summed SOAP feature φ(A) = Σ_i q̂_i of every configuration.

        Returns
        -------
        ndarray, shape ``(n_configs, n_features_)``.
        """
        per_atom = self.per_atom(frames)
        if not per_atom:
            return np.zeros((0, self.n_features_))
        return np.stack([x.sum(axis=0) for x in per_atom])


class SOAPDescriptor(_SOAPBase):
    """Per-atom and per-structure SOAP features (dscribe back-end).

    Parameters
    ----------
    r_cut : float, default 5.0
        Cutoff radius in Å.
    n_max : int, default 8
        Number of radial basis functions.
    l_max : int, default 6
        Maximum degree of the spherical harmonics.
    sigma : float, default 0.5
        Width of the atomic Gaussians in Å.
    species : sequence of str, optional
        Elements the descriptor covers. Default: taken from the structures
        given to :meth:`fit`.
    normalize : bool, default True
        Unit-normalise each atom's SOAP vector before any sum.

    Attributes
    ----------
    species_ : list of str
        Covered elements, sorted by atomic number.
    n_features_ : int
        Length of one SOAP vector.

    Notes
    -----
    Gradients use dscribe's analytical derivatives with ``attach=True``: by
    default dscribe keeps each centre fixed in space while its own atom moves,
    which is not the derivative of the atom's SOAP vector (it misses the
    centre's displacement; seen here as O(1) errors against finite
    differences). Analytical derivatives need ``periodic=False`` and the GTO
    basis, which is what this class builds.

    Examples
    --------
    >>> from ase.build import molecule
    >>> d = SOAPDescriptor(n_max=2, l_max=2).fit([molecule("H2O")])
    >>> d.per_structure([molecule("H2O")]).shape
    (1, 30)
    """

    name = "dscribe"

    def _build(self, species: list[str]) -> int:
        from dscribe.descriptors import SOAP  # lazy: dscribe imports numba/sparse

        self._soap = SOAP(
            species=species,
            r_cut=float(self.r_cut),
            n_max=int(self.n_max),
            l_max=int(self.l_max),
            sigma=float(self.sigma),
            periodic=False,
        )
        return self._soap.get_number_of_features()

    def _raw(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        out = self._soap.create(list(frames))
        if isinstance(out, np.ndarray) and out.ndim == 2:  # a single structure
            out = [out]
        return [np.asarray(x, dtype=float) for x in out]

    def _raw_gradients(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
        # dscribe's layout is (n_centers, n_atoms, 3, n_features): centre first, as ours.
        dx, x = self._soap.derivatives(atoms, method="analytical", attach=True)
        return np.asarray(x, dtype=float), np.asarray(dx, dtype=float)


class QuippySOAPDescriptor(_SOAPBase):
    """Per-atom and per-structure SOAP features (quippy back-end, as ``gap_fit``).

    One quippy ``soap`` descriptor per central species Z, each with every
    covered species as neighbours (``species_Z``), as in the GAP models of
    :mod:`loops.gap`; the rows quippy returns per species are put back in atom
    order.

    Parameters
    ----------
    r_cut, n_max, l_max, sigma, species, normalize
        As :class:`SOAPDescriptor` (``cutoff``, ``n_max``, ``l_max``,
        ``atom_sigma`` in quippy's words).
    cutoff_transition_width : float, default 1.0
        Width in Å of quippy's smooth switch-off below ``r_cut`` (the
        :class:`loops.gap.GAPSettings` default).
    diagonal_radial : bool, default False
        Keep only the radially diagonal (n = n') terms of the power spectrum,
        as a GAP fitted with ``diagonal_radial`` does (Darby, Kermode & Csányi,
        npj Comput. Mater. 8, 166 (2022)): ``(l_max+1)·n_max·S(S+1)/2``
        numbers for S species instead of ``(l_max+1)·(S·n_max)(S·n_max+1)/2``.

    Attributes
    ----------
    species_ : list of str
        Covered elements, sorted by atomic number.
    n_features_ : int
        Length of one SOAP vector (quippy's ``dimensions()``; its last entry
        is always 0 for this descriptor).

    Notes
    -----
    quippy is asked for unnormalised vectors (``normalise=F``) and oed
    normalises them itself, so both back-ends share one normalisation and one
    gradient of it. ``calc(atoms, grad=True)`` returns ``grad_data`` of shape
    (n_pairs, 3, d) and ``grad_index_0based`` with rows (centre atom, moved
    atom), both 0-based atom indices.

    Examples
    --------
    >>> from ase.build import molecule
    >>> d = QuippySOAPDescriptor(n_max=2, l_max=2).fit([molecule("H2O")])
    >>> d.per_structure([molecule("H2O")]).shape
    (1, 31)
    """

    name = "quippy"

    def __init__(
        self,
        *,
        r_cut: float = 5.0,
        n_max: int = 8,
        l_max: int = 6,
        sigma: float = 0.5,
        species: Sequence[str] | None = None,
        normalize: bool = True,
        cutoff_transition_width: float = 1.0,
        diagonal_radial: bool = False,
    ) -> None:
        super().__init__(r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, species=species, normalize=normalize)
        self.cutoff_transition_width = cutoff_transition_width
        self.diagonal_radial = diagonal_radial

    def get_params(self) -> dict:
        return {**super().get_params(), "cutoff_transition_width": self.cutoff_transition_width,
                "diagonal_radial": self.diagonal_radial}

    def _build(self, species: list[str]) -> int:
        if not 0 <= self.cutoff_transition_width < self.r_cut:
            raise InputError(
                f"cutoff_transition_width must be in [0, r_cut), got {self.cutoff_transition_width}"
            )
        try:
            from quippy.descriptors import Descriptor  # lazy: quippy is heavy
        except ImportError as exc:
            raise InputError("quippy is not importable; install it with `pip install quippy-ase`") from exc
        zs = [atomic_numbers[s] for s in species]
        common = (
            f"soap cutoff={float(self.r_cut)} cutoff_transition_width={float(self.cutoff_transition_width)} "
            f"l_max={int(self.l_max)} n_max={int(self.n_max)} atom_sigma={float(self.sigma)} "
            f"n_species={len(zs)} species_Z={{{' '.join(map(str, zs))}}} normalise=F"
            + (" diagonal_radial=T" if self.diagonal_radial else "")
        )
        self._quippy = {z: Descriptor(f"{common} Z={z}") for z in zs}
        return self._quippy[zs[0]].dimensions()

    def _raw(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        out = []
        for atoms in frames:
            x = np.zeros((len(atoms), self.n_features_))
            for z in np.unique(atoms.numbers):
                res = self._quippy[int(z)].calc(atoms)
                x[np.asarray(res["ci"]) - 1] = res["data"]  # ci: 1-based centre atoms
            out.append(x)
        return out

    def _raw_gradients(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
        n = len(atoms)
        x = np.zeros((n, self.n_features_))
        dx = np.zeros((n, n, 3, self.n_features_))
        for z in np.unique(atoms.numbers):
            res = self._quippy[int(z)].calc(atoms, grad=True)
            x[np.asarray(res["ci"]) - 1] = res["data"]
            pairs = np.asarray(res["grad_index_0based"])
            # pairs beyond the cutoff are absent: their derivative is zero.
            dx[pairs[:, 0], pairs[:, 1]] = res["grad_data"]
        return x, dx


#: SOAP back-ends by name (:func:`make_descriptor`).
DESCRIPTORS: dict[str, type[_SOAPBase]] = {"dscribe": SOAPDescriptor, "quippy": QuippySOAPDescriptor}


def make_descriptor(name: str, **params) -> SOAPDescriptor | QuippySOAPDescriptor:
    """An unfitted SOAP descriptor of the named back-end.

    Parameters
    ----------
    name : {"dscribe", "quippy"}
    **params
        Constructor parameters (``r_cut``, ``n_max``, ``l_max``, ``sigma``,
        ``species``, ``normalize``; quippy also ``cutoff_transition_width`` and
        ``diagonal_radial``).

    Raises
    ------
    InputError
        For an unknown back-end name or parameter.
    """
    try:
        cls = DESCRIPTORS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown descriptor {name!r}; choose from {', '.join(DESCRIPTORS)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise InputError(f"bad parameters for descriptor {name!r}: {exc}") from exc
