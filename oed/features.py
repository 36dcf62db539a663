"""Design blocks in the feature space of a sparse GAP: energy rows and force rows.

A sparse GAP with the SOAP dot-product kernel k(q, q') = (q̂·q̂')^ζ and sparse
environments Q_M is linear in its coefficients α (docs/design.md §1):

    E(A) = φ(A)ᵀ α,    φ(A) = Σ_i k(q̂_i, Q_M),    F_{a,α}(A) = −(∂φ(A)/∂r_{a,α})ᵀ α,

with ∂k(q̂_i, q_m)/∂r = ζ (q̂_i·q_m)^{ζ−1} (∂q̂_i/∂r · q_m). Each configuration
therefore contributes a design block J(A) of 1 + 3N rows: the energy row and
the force rows, each divided by its label noise. Kernels only compare atoms of
the same species (one GAP descriptor per central species), so φ is a
concatenation of per-species blocks and K_MM is block diagonal.

:class:`GAPKernelFeatures` builds these features; :func:`soap_design_blocks`
gives the cheaper summed-SOAP rows (φ(A) = Σ_i q̂_i) in the same layout.

Sources: Bartók, Payne, Kondor & Csányi, Phys. Rev. Lett. 104, 136403 (2010),
doi:10.1103/PhysRevLett.104.136403; Bartók & Csányi, Int. J. Quantum Chem.
115, 1051 (2015), doi:10.1002/qua.24927 (sparsification, CUR, force
observations); CUR: Mahoney & Drineas, PNAS 106, 697 (2009),
doi:10.1073/pnas.0803205106; FPS and CUR as implemented in scikit-matter
(Goscinski et al., Open Research Europe 3, 81 (2023),
doi:10.12688/openreseurope.15789.2).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from oed.descriptors import SOAPDescriptor, make_descriptor
from oed.errors import InputError, NotFittedError
from oed.information import DesignBlocks

#: Bytes of SOAP derivatives held at once while building design blocks; a
#: 9-atom molecule at n_max=8, l_max=6 (3 species) needs 4 MB, a 27-atom one
#: with 4 species 65 MB, so chunks stay far below the pool's total.
_CHUNK_BYTES = 256 * 2**20
_SPARSE_METHODS = ("cur", "cur_points", "fps", "random")
#: Singular values above this count towards the rank in gap_fit's CUR (libAtoms' TOL_SVD).
_TOL_SVD = 1e-13
#: Unit SOAP vectors equal to this many decimals are one environment.
_DUPLICATE_DECIMALS = 10

#: (q̂, ∂q̂ or None, atomic numbers) → (φ of shape (M,), ∂φ of shape (N, 3, M) or None)
FeatureMap = Callable[[np.ndarray, np.ndarray | None, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class GAPKernelFeatures:
    """Kernel features φ(A) = Σ_i k(q̂_i, Q_M) of a sparse SOAP-GAP, with force rows.

    Parameters
    ----------
    descriptor : SOAP descriptor or str, optional
        A :mod:`oed.descriptors` back-end (instance, or its registry name
        ``"dscribe"`` / ``"quippy"``); default ``SOAPDescriptor()``
        (r_cut 5 Å, n_max 8, l_max 6). A copy is fitted; the one given is not
        changed. Must normalise (``normalize=True``): the kernel is defined
        on unit vectors.
    zeta : int, default 4
        Kernel exponent ζ (GAP's ``zeta``); a positive integer, since SOAP
        dot products can be negative.
    n_sparse : int, default 200
        Sparse environments per central species; capped at the number of
        that species' distinct environments in the fitting pool (identical
        ones, e.g. symmetry-equivalent atoms, count once).
    sparse_method : {"cur", "cur_points", "fps", "random"}, default "cur"
        How sparse environments are picked among a species' atoms:
        ``"cur"``, scikit-matter's iterative CUR (leverage on the top singular
        vector, recomputed after every pick; one truncated SVD per pick, minutes
        for 6 000 × 2 100 environments); ``"cur_points"``, gap_fit's own
        randomised CUR on the descriptor matrix (Mahoney & Drineas, PNAS 106,
        697, 2009: one SVD, leverage scores ``p_j = min(1, m·Σ_{r<k} v_jr²/k)``
        over half the numerical rank k, the m environments with the largest
        ``p_j − u_j``, u uniform in [0, 1)), so that selection sees the sparse
        points a GAP fitted with ``sparse_method=cur_points`` would pick;
        ``"fps"``, farthest-point sampling (about 50 times faster than
        ``"cur"``); ``"random"``, uniformly at random (gap_fit's ``random``).
    random_state : int or None, default 0
        Seeds ARPACK's start vector (``"cur"``), the first pick (``"fps"``) or
        the random numbers of ``"cur_points"`` and ``"random"``.

    Attributes
    ----------
    descriptor_ : SOAP descriptor
        The fitted copy.
    species_ : list of str
        Central species with a block, sorted by atomic number.
    sparse_points_ : dict of str → ndarray, shape (M_Z, d)
        Unit SOAP vectors of the sparse environments of each species.
    sparse_envs_ : dict of str → ndarray of int, shape (M_Z, 2)
        (configuration, atom) of each sparse environment in the fitting pool.
    n_features_ : int
        M = Σ_Z M_Z, the length of φ.
    kernel_mm_ : ndarray, shape (M, M)
        Block-diagonal K_MM, k between sparse environments of one species:
        the SoR prior precision Λ₀ (subset-of-regressors sparse GP: Quiñonero-Candela &
        Rasmussen, JMLR 6, 1939, 2005; docs/design.md §2).

    Examples
    --------
    >>> from ase.build import molecule
    >>> from oed.descriptors import SOAPDescriptor
    >>> frames = [molecule("H2O"), molecule("CH3OH")]
    >>> f = GAPKernelFeatures(descriptor=SOAPDescriptor(n_max=2, l_max=2), n_sparse=2).fit(frames)
    >>> f.n_features_, f.transform(frames).shape
    (5, (2, 5))
    >>> f.design_blocks(frames, forces=True).sizes.tolist()
    [10, 19]
    """

    def __init__(
        self,
        *,
        descriptor: SOAPDescriptor | str | None = None,
        zeta: int = 4,
        n_sparse: int = 200,
        sparse_method: str = "cur",
        random_state: int | None = 0,
    ) -> None:
        self.descriptor = descriptor
        self.zeta = zeta
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.random_state = random_state

    def get_params(self) -> dict:
        """Settings that define the features, JSON-serialisable (for cache keys).

        The features also depend on the pool given to :meth:`fit` (it holds
        the sparse environments): key caches on that pool's hash too.
        """
        d = self._descriptor()
        return {
            "descriptor": {"name": getattr(d, "name", type(d).__name__), **d.get_params()},
            "zeta": self.zeta,
            "n_sparse": self.n_sparse,
            "sparse_method": self.sparse_method,
            "random_state": self.random_state,
        }

    def _descriptor(self):
        if self.descriptor is None:
            return SOAPDescriptor()
        if isinstance(self.descriptor, str):
            return make_descriptor(self.descriptor)
        return self.descriptor

    def _validate_params(self) -> None:
        zeta, n_sparse = self.zeta, self.n_sparse
        if isinstance(zeta, bool) or not isinstance(zeta, (int, np.integer)) or zeta < 1:
            raise InputError(f"zeta must be a positive integer, got {zeta!r}")
        if isinstance(n_sparse, bool) or not isinstance(n_sparse, (int, np.integer)) or n_sparse < 1:
            raise InputError(f"n_sparse must be a positive integer, got {n_sparse!r}")
        if self.sparse_method not in _SPARSE_METHODS:
            raise InputError(f"sparse_method must be one of {_SPARSE_METHODS}, got {self.sparse_method!r}")

    def fit(self, frames: Sequence[Atoms]) -> GAPKernelFeatures:
        """Pick the sparse environments of every species among the atoms of ``frames``.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad parameters, an empty pool, a descriptor that does not
            normalise; UnknownElementError for elements the descriptor does
            not cover.
        """
        self._validate_params()
        frames = list(frames)
        if not frames:
            raise InputError("GAPKernelFeatures.fit needs at least one configuration")
        descriptor = copy.deepcopy(self._descriptor())
        if not descriptor.normalize:
            raise InputError("GAP kernel features need a normalising descriptor (normalize=True)")
        descriptor.fit(frames)
        q = np.concatenate(descriptor.per_atom(frames))
        numbers = np.concatenate([atoms.numbers for atoms in frames])
        where = np.column_stack([
            np.repeat(np.arange(len(frames)), [len(a) for a in frames]),
            np.concatenate([np.arange(len(a)) for a in frames]),
        ])
        points, envs = {}, {}
        for symbol in descriptor.species_:
            idx = np.flatnonzero(numbers == atomic_numbers[symbol])
            if len(idx) == 0:  # covered but absent from the pool: no block
                continue
            # Symmetry-equivalent atoms (the two H of H2O) and repeated frames have
            # identical environments; picking two would make K_MM singular.
            _, first = np.unique(np.round(q[idx], _DUPLICATE_DECIMALS), axis=0, return_index=True)
            idx = idx[np.sort(first)]
            pick = idx[self._select(q[idx], min(int(self.n_sparse), len(idx)))]
            points[symbol], envs[symbol] = q[pick], where[pick]
        self.descriptor_ = descriptor
        self.species_ = list(points)
        self.sparse_points_ = points
        self.sparse_envs_ = envs
        self.n_features_ = int(sum(len(p) for p in points.values()))
        from scipy.linalg import block_diag

        self.kernel_mm_ = block_diag(*[(p @ p.T) ** int(self.zeta) for p in points.values()])
        return self

    def prior_whitening(self, delta: float = 1.0, *, jitter: float = 1e-8) -> np.ndarray:
        """Matrix W with which design rows ``J @ W`` have the sparse GP's prior as identity.

        A sparse GAP (subset of regressors) puts the prior α ~ N(0, δ² K_MM⁻¹) on the
        coefficients of φ (Quiñonero-Candela & Rasmussen, JMLR 6, 1939, 2005), i.e. the prior
        precision Λ₀ = K_MM/δ². With K_MM = V diag(w) Vᵀ (per species: K_MM is block diagonal)
        and W = δ V diag(w)^{-1/2}, α = W β gives β ~ N(0, I), and E = φᵀα = (φᵀW)β: every
        selector built on Λ₀ = λI then works in the GAP's own prior with λ = 1. Eigenvalues
        below ``jitter`` × the largest of their block are raised to it, as gap_fit adds
        ``sparse_jitter`` to K_MM; for exact kernel rows ‖φᵀW‖² ≤ δ² k(x, x) stays bounded.

        Parameters
        ----------
        delta : float, default 1.0
            GAP's ``delta``, the prior scale of an atomic energy (eV; rows in noise units).
        jitter : float, default 1e-8
            Relative floor of K_MM's eigenvalues.

        Returns
        -------
        ndarray, shape (n_features_, n_features_)
            Block diagonal, like K_MM.

        Raises
        ------
        NotFittedError
        InputError
            A non-positive ``delta`` or ``jitter``.
        """
        self._check_fitted()
        if not (delta > 0 and jitter > 0):
            raise InputError(f"delta and jitter must be > 0, got {delta!r} and {jitter!r}")
        W = np.zeros((self.n_features_, self.n_features_))
        start = 0
        for Q in self.sparse_points_.values():
            cols = slice(start, start + len(Q))
            start += len(Q)
            w, V = np.linalg.eigh((Q @ Q.T) ** int(self.zeta))
            w = np.maximum(w, jitter * float(w.max()))  # K_MM has unit diagonal: max(w) >= 1
            W[cols, cols] = delta * V / np.sqrt(w)
        return W

    def _select(self, X: np.ndarray, m: int) -> np.ndarray:
        """Indices of ``m`` rows of ``X`` (all when ``m == len(X)``).

        In pick order for cur and fps, increasing for cur_points and random.
        """
        if m == len(X):  # nothing to choose; CUR's SVD also needs m < len(X)
            return np.arange(m)
        if self.sparse_method == "cur_points":
            return _cur_points(X, m, np.random.default_rng(self.random_state))
        if self.sparse_method == "random":
            return np.sort(np.random.default_rng(self.random_state).choice(len(X), m, replace=False))
        from skmatter.sample_selection import CUR, FPS  # lazy: skmatter imports sklearn

        if self.sparse_method == "cur":
            selector = CUR(n_to_select=m, random_state=self.random_state)
        else:
            selector = FPS(n_to_select=m, initialize="random", random_state=self.random_state)
        return np.asarray(selector.fit(X).selected_idx_, dtype=np.int64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "sparse_points_"):
            raise NotFittedError("GAPKernelFeatures is not fitted: call fit(frames) first")

    def _feature_map(self, q: np.ndarray, dq: np.ndarray | None, numbers: np.ndarray):
        """φ(A) of shape (M,) and, given ∂q̂, ∂φ/∂r of shape (N, 3, M)."""
        zeta = int(self.zeta)
        phi = np.zeros(self.n_features_)
        dphi = None if dq is None else np.zeros((len(numbers), 3, self.n_features_))
        start = 0
        for symbol, Q in self.sparse_points_.items():
            cols = slice(start, start + len(Q))
            start += len(Q)
            centres = np.flatnonzero(numbers == atomic_numbers[symbol])
            if len(centres) == 0:  # the species' block stays zero
                continue
            K = q[centres] @ Q.T  # (n_Z, M_Z)
            phi[cols] = (K**zeta).sum(axis=0)
            if dq is not None:
                dK = dq[centres] @ Q.T  # (n_Z, N, 3, M_Z): ∂q̂_i/∂r_{a,α} · q_m
                dphi[:, :, cols] = np.einsum("im,iakm->akm", zeta * K ** (zeta - 1), dK)
        return phi, dphi

    def transform(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Energy features φ(A) = concat_Z Σ_{i: Z_i = Z} (q̂_i·Q_M^Z)^ζ.

        Returns
        -------
        ndarray, shape (n_configs, n_features_)
            Dimensionless (a sum of kernel values).

        Raises
        ------
        NotFittedError, UnknownElementError, InputError
        """
        self._check_fitted()
        return _design_blocks(
            frames, self.descriptor_, self._feature_map, self.n_features_,
            forces=False, sigma_energy=1.0, sigma_force=1.0, scale_energy=False, progress=False,
        ).rows

    def design_blocks(
        self,
        frames: Sequence[Atoms],
        *,
        forces: bool = False,
        sigma_energy: float = 0.001,
        sigma_force: float = 0.02,
        progress: bool = False,
    ) -> DesignBlocks:
        """Design block J(A) of every configuration: energy row, then 3N force rows.

        Parameters
        ----------
        frames : sequence of ase.Atoms
        forces : bool, default False
            Add the force rows (needs SOAP gradients: about 10× the time).
        sigma_energy : float, default 0.001
            Energy noise per atom σ_E in eV/atom (GAP's ``default_sigma``); a
            configuration of N atoms has energy noise N·σ_E.
        sigma_force : float, default 0.02
            Force noise σ_F per component in eV/Å.
        progress : bool, default False
            Show a rich progress bar.

        Returns
        -------
        DesignBlocks
            Block of configuration A (N atoms): ``φ(A)/(σ_E N)``, then with
            ``forces`` the rows ``−∂φ/∂r_{a,α}/σ_F`` for atom a = 0, 1, … and
            α = x, y, z (eV/Å · Å/eV: dimensionless). Shape of the rows:
            (Σ_A (1 + 3N_A), n_features_), or one row per configuration.

        Raises
        ------
        NotFittedError, UnknownElementError
        InputError
            For a non-positive σ.
        """
        self._check_fitted()
        return _design_blocks(
            frames, self.descriptor_, self._feature_map, self.n_features_, forces=forces,
            sigma_energy=sigma_energy, sigma_force=sigma_force, scale_energy=True, progress=progress,
        )


def _cur_points(X: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``X`` (n, d) picked as gap_fit's ``sparse_method=cur_points`` picks them.

    GAP's ``cur_decomposition`` (libAtoms/GAP clustering.F90, after Mahoney & Drineas,
    PNAS 106, 697, 2009) with one sampling round: with V the right singular vectors of the
    descriptor matrix (one column per environment) and k half its numerical rank, environment
    j has the leverage score p_j = min(1, m/k · Σ_{r<k} V_jr²); the m environments with the
    largest p_j − u_j (u_j uniform in [0, 1)) are kept. Same method, not the same numbers as a
    given gap_fit run (its random numbers differ).

    Returns
    -------
    ndarray of int, shape (m,)
        Row indices, in increasing order.
    """
    u, s, _ = np.linalg.svd(X, full_matrices=False)  # u: (n, r), the environments' side
    k = max(int(np.count_nonzero(s > _TOL_SVD)) // 2, 1)
    p = np.minimum(np.sum(u[:, :k] ** 2, axis=1) * m / k, 1.0)
    return np.sort(np.argsort(rng.uniform(size=len(p)) - p, kind="stable")[:m])


def soap_design_blocks(
    frames: Sequence[Atoms],
    descriptor,
    *,
    forces: bool = False,
    sigma_energy: float = 0.001,
    sigma_force: float = 0.02,
    progress: bool = False,
) -> DesignBlocks:
    """Design blocks of the summed-SOAP model φ(A) = Σ_i q̂_i (docs/design.md §1).

    Parameters
    ----------
    frames : sequence of ase.Atoms
    descriptor : fitted SOAP descriptor (:mod:`oed.descriptors`)
    forces, sigma_energy, sigma_force, progress
        As :meth:`GAPKernelFeatures.design_blocks`.

    Returns
    -------
    DesignBlocks
        Energy row ``Σ_i q̂_i/(σ_E N)`` and, with ``forces``, the rows
        ``−Σ_i ∂q̂_i/∂r_{a,α}/σ_F``; ``descriptor.n_features_`` columns.

    Raises
    ------
    NotFittedError, UnknownElementError
    InputError
        For a non-positive σ.
    """
    descriptor.check_frames(frames)

    def summed(q, dq, numbers):
        return q.sum(axis=0), None if dq is None else dq.sum(axis=0)

    return _design_blocks(
        frames, descriptor, summed, descriptor.n_features_, forces=forces,
        sigma_energy=sigma_energy, sigma_force=sigma_force, scale_energy=True, progress=progress,
    )


def _chunks(frames: Sequence[Atoms], bytes_per_config: Callable[[Atoms], int]) -> Iterator[list[Atoms]]:
    """Consecutive runs of ``frames`` whose work arrays fit in ``_CHUNK_BYTES`` (≥ 1 each)."""
    chunk, size = [], 0
    for atoms in frames:
        cost = bytes_per_config(atoms)
        if chunk and size + cost > _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(atoms)
        size += cost
    if chunk:
        yield chunk


@contextlib.contextmanager
def _progress_bar(enabled: bool, *, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_configs)``; a rich progress bar when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress  # lazy: rich only for interactive use

    with Progress() as bar:
        task = bar.add_task("design rows", total=total)
        yield lambda n: bar.advance(task, n)


def _design_blocks(
    frames: Sequence[Atoms],
    descriptor,
    feature_map: FeatureMap,
    n_features: int,
    *,
    forces: bool,
    sigma_energy: float,
    sigma_force: float,
    scale_energy: bool,
    progress: bool,
) -> DesignBlocks:
    """Apply ``feature_map`` chunk by chunk and write the scaled rows in place.

    ``scale_energy=False`` leaves energy rows as φ(A) (plain features).
    """
    if not sigma_energy > 0 or not sigma_force > 0:
        raise InputError(f"sigma_energy and sigma_force must be > 0, got {sigma_energy}, {sigma_force}")
    frames = list(frames)
    # Validate the whole pool first, so an error names the configuration's
    # index in the pool rather than in a chunk, and before any SOAP work.
    descriptor.check_frames(frames)
    sizes = np.array([1 + 3 * len(a) if forces else 1 for a in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.empty((offsets[-1], n_features))  # filled in place: no list of blocks to stack
    d = descriptor.n_features_

    def cost(atoms: Atoms) -> int:  # bytes of q (and ∂q: N × 3 times more) per configuration
        return 8 * len(atoms) * d * (3 * len(atoms) if forces else 1)

    i = 0
    with _progress_bar(progress, total=len(frames)) as advance:
        for chunk in _chunks(frames, cost):
            per = descriptor.per_atom_gradients(chunk) if forces else ((q, None) for q in descriptor.per_atom(chunk))
            for atoms, (q, dq) in zip(chunk, per):
                phi, dphi = feature_map(q, dq, atoms.numbers)
                r = offsets[i]
                rows[r] = phi / (sigma_energy * len(atoms)) if scale_energy else phi
                if forces:
                    rows[r + 1 : offsets[i + 1]] = -dphi.reshape(3 * len(atoms), n_features) / sigma_force
                i += 1
            advance(len(chunk))
    return DesignBlocks(rows, offsets)
