"""Distribution-shift diagnostics: is a test configuration unlike the training set, and how?

Kreiman & Krishnapriyan characterise three shifts between the training and test systems of a
machine-learning force field, each visible *before* any reference label of the test system:

- **feature shift** — atomic environments (or elements) not seen in training. Measured here as the
  distance from each atom's SOAP vector to the nearest training environment of its element (unit
  vectors, so 0 ≤ d ≤ 2; ``inf`` for an element absent from training), the largest over the
  configuration's atoms; and as the MaxVol extrapolation grade γ (:mod:`oed.domain`).
- **force-norm shift** — larger forces than in training (e.g. compressed bonds). oed is label-free,
  so the norms come from the caller: a cheap prior's forces (GFN2-xTB in ``oed shift``) for both
  sets, so that like is compared with like. The value is the mean atomic force norm |F_i| (eV/Å).
- **connectivity shift** — a radius graph unlike any training graph (a tetrahedral cage against
  chains). Each configuration's graph (edges between atoms closer than ``cutoff``; the model's
  cut-off) gives the spectrum of its normalised Laplacian L = I − D^{-1/2} A D^{-1/2}, eigenvalues
  in [0, 2]. The value is the Wasserstein-1 distance between the spectrum and the nearest training
  spectrum (computed from the spectra's CDFs on a grid: W₁ = ∫|F₁ − F₂| dλ). The paper's summary
  statistic, the fraction of eigenvalues in [0.9, 1.1], is reported beside it.

**Flags.** Each scalar is flagged when it lies beyond the training set's own distribution: more than
``n_sigma`` standard deviations above the training mean (the paper's one standard deviation by
default; one-sided, since only "farther" or "larger" is a shift), γ above ``gamma_threshold``. For the
two nearest-neighbour distances the training distribution is leave-one-configuration-out: a training
configuration's distance to the *other* training configurations (on at most ``max_reference`` of
them), so an in-distribution test configuration is judged against what a fresh draw looks like.
A value within ``atol`` of the training mean is never flagged (identical graphs give exactly 0).

References
----------
T. Kreiman and A. S. Krishnapriyan, "Understanding and mitigating distribution shifts for machine
learning force fields", arXiv:2503.08674 (2025); Digital Discovery (2026), DOI 10.1039/D5DD00260E.
F. R. K. Chung, *Spectral Graph Theory* (AMS, 1997): the normalised Laplacian.
E. V. Podryabinkin and A. V. Shapeev, Comput. Mater. Sci. 140, 171 (2017): the grade γ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from oed.errors import InputError, NotFittedError

__all__ = ["DIAGNOSTICS", "ShiftDiagnostics", "ShiftResult", "laplacian_spectrum", "mean_force_norms", "refined_radii"]

#: Diagnostics in report order; ``force_norm`` only when force norms are given.
DIAGNOSTICS = ("feature", "gamma", "force_norm", "connectivity")
#: Grid of the spectral CDFs: eigenvalues of a normalised Laplacian lie in [0, 2].
_GRID = np.linspace(0.0, 2.0, 401)
#: Rows of environment similarities computed at once (keeps temporaries near 100 MB).
_ROWS = 4096


def laplacian_spectrum(atoms: Atoms, cutoff: float) -> np.ndarray:
    """Eigenvalues of the normalised Laplacian of the radius graph of ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
        Positions in Å (periodic images are neighbours when ``pbc`` is set).
    cutoff : float
        Edge between two atoms closer than this (Å); ``ase.neighborlist.neighbor_list``.

    Returns
    -------
    ndarray, shape (n_atoms,)
        Ascending, in [0, 2]. An isolated atom (no neighbour) contributes 0 (Chung's convention).
    """
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    i, j = neighbor_list("ij", atoms, float(cutoff))
    adjacency = np.zeros((n, n))
    np.add.at(adjacency, (i, j), 1.0)  # several images of one neighbour: weighted edges
    degree = adjacency.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    lap = np.diag((degree > 0).astype(float)) - inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    return np.clip(np.linalg.eigvalsh(lap), 0.0, 2.0)


def mean_force_norms(forces: Sequence[np.ndarray]) -> np.ndarray:
    """Mean atomic force norm of each configuration: (1/N) Σ_i |F_i|, shape (n_configs,), eV/Å.

    Raises
    ------
    InputError
        A force array that is not (n_atoms, 3) or not finite.
    """
    out = []
    for k, f in enumerate(forces):
        f = np.asarray(f, dtype=float)
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or not np.all(np.isfinite(f)):
            raise InputError(f"forces of configuration {k} must be a finite (n_atoms, 3) array, got shape {f.shape}")
        out.append(float(np.linalg.norm(f, axis=1).mean()))
    return np.asarray(out)


def _cdf(spectrum: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(spectrum), _GRID, side="right") / len(spectrum)


def _w1_nearest(query: np.ndarray, ref: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """W₁ of each query CDF to its nearest reference CDF (rows of ``ref``); ``exclude[q]`` is skipped."""
    step = _GRID[1] - _GRID[0]
    out = np.empty(len(query))
    for start in range(0, len(query), 256):
        q = query[start:start + 256]
        d = np.abs(q[:, None, :] - ref[None, :, :]).sum(axis=2) * step
        if exclude is not None:
            d[np.arange(len(q)), exclude[start:start + 256]] = np.inf
        out[start:start + 256] = d.min(axis=1)
    return out


@dataclass
class ShiftResult:
    """Diagnostics of one set of configurations against the training set.

    Attributes
    ----------
    values : dict of str to ndarray (n_configs,)
        ``feature`` (SOAP distance, dimensionless, 0–2 or inf), ``gamma`` (γ), ``force_norm`` (eV/Å,
        when force norms were given), ``connectivity`` (W₁ of the Laplacian spectrum, 0–2) and
        ``laplacian_window`` (fraction of eigenvalues in [0.9, 1.1], not a flagged diagnostic).
    flagged : dict of str to ndarray of bool (n_configs,)
        Per flagged diagnostic (see the module docstring).
    thresholds : dict of str to float
        The value above which each diagnostic flags.
    """

    values: dict[str, np.ndarray]
    flagged: dict[str, np.ndarray]
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(next(iter(self.values.values())))

    @property
    def flagged_fraction(self) -> dict[str, float]:
        """Fraction (0–1) of configurations each diagnostic flags, and ``any`` of them."""
        out = {k: float(np.mean(v)) if len(v) else 0.0 for k, v in self.flagged.items()}
        if self.flagged:
            out["any"] = float(np.mean(np.any(np.stack(list(self.flagged.values())), axis=0)))
        return out


class ShiftDiagnostics:
    """Label-free shift diagnostics of test configurations against a training set.

    ``fit(train, force_norms=…)`` stores the training environments, spectra and statistics;
    ``score(frames, force_norms=…)`` returns a :class:`ShiftResult`. See the module docstring for
    what each diagnostic measures and when it flags.

    Parameters
    ----------
    descriptor : object, optional
        Per-atom feature maker (``fit``, ``per_atom``), default ``oed.descriptors.SOAPDescriptor()``
        (unit-normalised SOAP vectors). It must cover every element of the test sets: pass
        ``species=`` (``oed shift`` passes the union of all files' elements).
    cutoff : float, default 5.0
        Radius of the graph (Å), the model's cut-off (GAP and MACE default 5 Å here).
    n_sigma : float, default 1.0
        Flag a value more than this many training standard deviations above the training mean.
    gamma_threshold : float, default 2.0
        Flag γ above this (pacemaker's usual "collect" level, :data:`oed.domain.GAMMA_WARN`).
    max_reference : int, default 500
        Training configurations whose leave-one-out distances estimate the training distribution.
    atol : float, default 1e-6
        Distances within this of the training mean are never flagged.
    seed : int, default 0
        Which training configurations form the reference sample when there are more than
        ``max_reference``.

    Raises
    ------
    InputError
        Bad parameters, an empty training set, force norms of the wrong length.
    NotFittedError
        ``score`` before ``fit``.
    """

    def __init__(self, *, descriptor=None, cutoff: float = 5.0, n_sigma: float = 1.0, gamma_threshold: float = 2.0,
                 max_reference: int = 500, atol: float = 1e-6, seed: int = 0) -> None:
        self.descriptor = descriptor
        self.cutoff = cutoff
        self.n_sigma = n_sigma
        self.gamma_threshold = gamma_threshold
        self.max_reference = max_reference
        self.atol = atol
        self.seed = seed

    def _validate(self) -> None:
        for name in ("cutoff", "n_sigma", "gamma_threshold", "atol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not np.isfinite(v) or v < 0 \
                    or (name == "cutoff" and v == 0):
                raise InputError(f"ShiftDiagnostics {name} must be a finite number > 0 (≥ 0 for n_sigma, atol), got {v!r}")
        if not isinstance(self.max_reference, (int, np.integer)) or self.max_reference < 2:
            raise InputError(f"ShiftDiagnostics max_reference must be an integer >= 2, got {self.max_reference!r}")

    @staticmethod
    def _frames(frames, what: str) -> list[Atoms]:
        frames = [frames] if isinstance(frames, Atoms) else list(frames)
        for i, a in enumerate(frames):
            if not isinstance(a, Atoms) or len(a) == 0:
                raise InputError(f"{what}: configuration {i} is not an ase.Atoms with at least one atom")
        return frames

    @staticmethod
    def _norms(force_norms, n: int, what: str) -> np.ndarray | None:
        if force_norms is None:
            return None
        g = np.asarray(force_norms, dtype=float)
        # NaN: no norm for that configuration (its cheap calculation failed); it is never flagged
        if g.shape != (n,) or np.any(np.isinf(g)) or np.any(g < 0):
            raise InputError(f"{what} force norms must be {n} values >= 0 (one per configuration, NaN where "
                             f"unknown), got shape {g.shape}")
        return g

    # ------------------------------------------------------------------ fit
    def fit(self, train: Sequence[Atoms], *, force_norms=None) -> ShiftDiagnostics:
        """Store what the training set looks like.

        Parameters
        ----------
        train : sequence of ase.Atoms
        force_norms : array (n_train,), optional
            Mean atomic force norm of each training configuration (eV/Å, :func:`mean_force_norms`),
            from the same source as the test sets' (e.g. GFN2-xTB for both); NaN where unknown.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad parameters, fewer than 2 training configurations, force norms of the wrong length.
        """
        from oed.domain import ExtrapolationGrade

        self._validate()
        train = self._frames(train, "training set")
        if len(train) < 2:
            raise InputError("the training set needs at least 2 configurations to estimate its spread")
        if self.descriptor is None:
            from oed.descriptors import SOAPDescriptor

            descriptor = SOAPDescriptor()
        else:
            import copy

            descriptor = copy.deepcopy(self.descriptor)
        if getattr(descriptor, "n_features_", None) is None:
            descriptor.fit(train)
        self.descriptor_ = descriptor
        self.grade_ = ExtrapolationGrade(descriptor=descriptor).fit(train)
        feats = descriptor.per_atom(train)
        symbols = [np.array(a.get_chemical_symbols()) for a in train]
        self.species_ = sorted({s for sym in symbols for s in sym}, key=atomic_numbers.get)
        rows = np.concatenate(feats)
        elem = np.concatenate(symbols)
        owner = np.repeat(np.arange(len(train)), [len(a) for a in train])
        self.env_ = {s: rows[elem == s] for s in self.species_}
        self.env_owner_ = {s: owner[elem == s] for s in self.species_}
        self.train_cdfs_ = np.stack([_cdf(laplacian_spectrum(a, self.cutoff)) for a in train])
        rng = np.random.default_rng(self.seed)
        ref = np.arange(len(train)) if len(train) <= self.max_reference else \
            np.sort(rng.choice(len(train), self.max_reference, replace=False))
        self.reference_ = ref
        train_values = {
            "feature": self._feature_distance([feats[i] for i in ref], [symbols[i] for i in ref], exclude=ref),
            "connectivity": _w1_nearest(self.train_cdfs_[ref], self.train_cdfs_, exclude=ref),
        }
        self.n_train_ = len(train)
        norms = self._norms(force_norms, len(train), "training")
        if norms is not None and np.sum(np.isfinite(norms)) < 2:
            raise InputError("training force norms: fewer than 2 known values, nothing to compare with")
        if norms is not None:
            train_values["force_norm"] = norms
        self.train_values_ = train_values
        self.thresholds_ = {k: self._threshold(v) for k, v in train_values.items()}
        self.thresholds_["gamma"] = float(self.gamma_threshold)
        return self

    def _threshold(self, values: np.ndarray) -> float:
        values = values[np.isfinite(values)]
        mean = float(values.mean()) if len(values) else 0.0
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return mean + max(self.n_sigma * sd, self.atol)

    def _feature_distance(self, feats, symbols, exclude=None) -> np.ndarray:
        """Largest over atoms of the distance to the nearest training environment of the same element."""
        out = np.zeros(len(feats))
        rows = np.concatenate(feats)
        elem = np.concatenate(symbols)
        owner = np.repeat(np.arange(len(feats)), [len(f) for f in feats])
        dist = np.full(len(rows), np.inf)
        for s in self.species_:
            m = np.flatnonzero(elem == s)
            env, env_owner = self.env_[s], self.env_owner_[s]
            env_sq = (env ** 2).sum(axis=1)
            for start in range(0, len(m), _ROWS):
                idx = m[start:start + _ROWS]
                sq = (rows[idx] ** 2).sum(axis=1)[:, None] + env_sq[None, :] - 2.0 * (rows[idx] @ env.T)
                if exclude is not None:  # leave the configuration itself out
                    sq[exclude[owner[idx]][:, None] == env_owner[None, :]] = np.inf
                dist[idx] = np.sqrt(np.clip(sq.min(axis=1), 0.0, None))
        np.maximum.at(out, owner, dist)
        return out

    # ---------------------------------------------------------------- score
    def score(self, frames: Sequence[Atoms], *, force_norms=None) -> ShiftResult:
        """Diagnostics of ``frames`` (a :class:`ShiftResult`; see the class and module docstrings).

        Parameters
        ----------
        frames : sequence of ase.Atoms
        force_norms : array (n_configs,), optional
            As for :meth:`fit` (eV/Å, NaN where unknown: never flagged).

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        InputError
            Force norms given here but not to ``fit`` (or the other way round), or of the wrong length.
        """
        if not hasattr(self, "train_values_"):
            raise NotFittedError("ShiftDiagnostics is not fitted: call fit(train) first")
        frames = self._frames(frames, "configurations to score")
        norms = self._norms(force_norms, len(frames), "test")
        if (norms is None) != ("force_norm" not in self.train_values_):
            raise InputError("give force norms to both fit and score, or to neither")
        symbols = [np.array(a.get_chemical_symbols()) for a in frames]
        known = [np.isin(sym, self.species_) for sym in symbols]
        feature = np.full(len(frames), np.inf)
        ok = [i for i, k in enumerate(known) if k.all()]
        if ok:
            feats = self.descriptor_.per_atom([frames[i] for i in ok])
            feature[ok] = self._feature_distance(feats, [symbols[i] for i in ok])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unseen elements: γ = inf, already flagged by feature
            gamma = np.asarray(self.grade_.transform(frames), dtype=float)
        spectra = [laplacian_spectrum(a, self.cutoff) for a in frames]
        cdfs = np.stack([_cdf(ev) for ev in spectra]) if frames else np.zeros((0, len(_GRID)))
        values = {"feature": feature, "gamma": gamma}
        if norms is not None:
            values["force_norm"] = norms
        values["connectivity"] = _w1_nearest(cdfs, self.train_cdfs_) if frames else np.zeros(0)
        flagged = {k: values[k] > self.thresholds_[k] for k in DIAGNOSTICS if k in values}
        values["laplacian_window"] = np.array([float(np.mean((ev >= 0.9) & (ev <= 1.1))) for ev in spectra])
        return ShiftResult(values=values, flagged=flagged, thresholds=dict(self.thresholds_))


def refined_radii(diagnostics: ShiftDiagnostics, frames: Sequence[Atoms], candidates: Sequence[float]) -> np.ndarray:
    """Test-time radius refinement: per configuration, the graph radius whose spectrum is most like training.

    For each configuration and each candidate radius r, the Wasserstein-1 distance between the
    normalised-Laplacian spectrum of its radius-r graph and the nearest training spectrum (training
    graphs at ``diagnostics.cutoff``, the model's own radius); the radius with the smallest distance
    is chosen, ties going to the largest radius (the model's own graph unless another is closer).

    Parameters
    ----------
    diagnostics : ShiftDiagnostics
        Fitted on the model's training set, with ``cutoff`` = the model's cut-off.
    frames : sequence of ase.Atoms
    candidates : sequence of float
        Radii to try (Å), each in (0, diagnostics.cutoff].

    Returns
    -------
    ndarray, shape (n_configs,)
        The chosen radius of each configuration (Å).

    Raises
    ------
    NotFittedError, InputError
        Not fitted; no candidate, or a candidate outside (0, cutoff].

    References
    ----------
    Kreiman & Krishnapriyan, arXiv:2503.08674 (2025), test-time radius refinement.
    """
    if not hasattr(diagnostics, "train_cdfs_"):
        raise NotFittedError("ShiftDiagnostics is not fitted: call fit(train) first")
    radii = np.asarray(sorted({float(r) for r in candidates}, reverse=True))
    if not len(radii) or np.any(radii <= 0) or np.any(radii > diagnostics.cutoff + 1e-9):
        raise InputError(f"candidate radii must lie in (0, {diagnostics.cutoff}] Å, got {list(candidates)!r}")
    frames = ShiftDiagnostics._frames(frames, "configurations to refine")
    dist = np.stack([_w1_nearest(np.stack([_cdf(laplacian_spectrum(a, r)) for a in frames]), diagnostics.train_cdfs_)
                     for r in radii], axis=1) if frames else np.zeros((0, len(radii)))
    # argmin takes the first minimum: radii are in decreasing order, so ties keep the larger radius
    return radii[np.argmin(dist, axis=1)] if len(frames) else np.zeros(0)
