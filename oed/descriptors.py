"""SOAP structure features through dscribe.

The energy-only design feature of a configuration A is the sum of its atoms'
SOAP vectors, φ(A) = Σ_i q̂_i (DESIGN.md §1): energies are sums of atomic
terms, so a linear model on φ is the linear-in-parameters view of a SOAP-GAP
with a dot-product kernel. Atom vectors are unit-normalised first (q̂), as in
the GAP kernel k(q, q') = (q̂·q̂')^ζ, so every atom carries the same weight.

Sources: Bartók, Kondor & Csányi, "On representing chemical environments",
Phys. Rev. B 87, 184115 (2013), doi:10.1103/PhysRevB.87.184115; dscribe:
Himanen et al., Comput. Phys. Commun. 247, 106949 (2020),
doi:10.1016/j.cpc.2019.106949.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from oed.errors import InputError, NotFittedError, UnknownElementError


def species_of(frames: Sequence[Atoms]) -> list[str]:
    """Chemical symbols present in ``frames``, sorted by atomic number."""
    zs = sorted({int(z) for atoms in frames for z in atoms.numbers})
    return [chemical_symbols[z] for z in zs]


class SOAPDescriptor:
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

    Examples
    --------
    >>> from ase.build import molecule
    >>> d = SOAPDescriptor(n_max=2, l_max=2).fit([molecule("H2O")])
    >>> d.per_structure([molecule("H2O")]).shape
    (1, 30)
    """

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

    def fit(self, frames: Sequence[Atoms]) -> SOAPDescriptor:
        """Fix the covered species (from ``frames`` unless given) and build the back-end.

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
        from dscribe.descriptors import SOAP  # lazy: dscribe imports numba/sparse

        self._soap = SOAP(
            species=species,
            r_cut=float(self.r_cut),
            n_max=int(self.n_max),
            l_max=int(self.l_max),
            sigma=float(self.sigma),
            periodic=False,
        )
        self.species_ = species
        self.n_features_ = int(self._soap.get_number_of_features())
        return self

    def _check(self, frames: Sequence[Atoms]) -> None:
        if not hasattr(self, "species_"):
            raise NotFittedError("SOAPDescriptor is not fitted: call fit(frames) first")
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
        """SOAP vector of every atom.

        Returns
        -------
        list of ndarray, one per configuration, shape ``(n_atoms_i, n_features_)``.

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
        """
        self._check(frames)
        if not frames:
            return []
        out = self._soap.create(list(frames))
        if isinstance(out, np.ndarray) and out.ndim == 2:  # a single structure
            out = [out]
        feats = [np.asarray(x, dtype=float) for x in out]
        if self.normalize:
            feats = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300) for x in feats]
        return feats

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
