"""From configurations to design rows, and from design rows to a ranking (label-free).

:func:`design_features` is the one place where structures become the design
blocks J(A) every criterion works on (Bartók et al., PRL 104, 136403 (2010);
docs/design.md §1): the energy row φ(A)/(σ_E·N) and, with ``forces=True``, the
3N force rows −∂φ/∂r/σ_F, for either of two feature maps:

- ``"soap"``: summed SOAP, φ(A) = Σ_i q̂_i — cheap, the default for large pools;
- ``"gap-kernel"``: the sparse GAP's own features φ(A) = Σ_i k(q̂_i, Q_M) —
  the model's feature space, which the measurements of docs/design.md §2 found
  to matter (Bartók & Csányi, IJQC 115, 1051 (2015)).

Rows are divided by the expected errors, so the natural prior precision is
λ = 1/δ² with δ (eV) the prior scale of an atomic energy: GAP's ``delta`` = 1 eV
gives λ = 1, the default here (:data:`DEFAULT_REG`, the same object as
:data:`oed.information.DEFAULT_PRIOR_PRECISION`). :func:`rank_pool` reads and
writes nothing, so the command line and the active-learning loop share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms

from oed.descriptors import make_descriptor, species_of
from oed.errors import InputError
from oed.information import DEFAULT_PRIOR_PRECISION, DesignBlocks, log_det_information
from oed.io import pool_hash, reference_energy
from oed.selectors import make_selector

#: Prior precision for noise-scaled rows: 1/δ² with δ = 1 eV (GAP's delta); the one default
#: :data:`oed.information.DEFAULT_PRIOR_PRECISION` under its older name.
DEFAULT_REG = DEFAULT_PRIOR_PRECISION


@dataclass(frozen=True)
class FeatureSpec:
    """How configurations become design rows.

    Parameters
    ----------
    kind : {"soap", "gap-kernel"}
        Summed SOAP or GAP kernel features.
    backend : {"dscribe", "quippy"}
        SOAP implementation.
    forces : bool
        Add the 3N force rows to each block.
    sigma_energy : float
        Expected energy error per atom, eV/atom.
    sigma_force : float
        Expected force-component error, eV/Å.
    r_cut, n_max, l_max, sigma : SOAP settings (Å, -, -, Å).
    diagonal_radial : bool
        Radially diagonal power spectrum, as a GAP with ``diagonal_radial``
        (quippy back-end only).
    zeta, n_sparse, sparse_method : GAP kernel settings ("gap-kernel" only).
    prior : {"identity", "kmm"}
        Prior of the feature coefficients: ``"identity"`` (Λ₀ = λI on the rows as they are)
        or, for "gap-kernel", ``"kmm"``: the sparse GAP's own prior K_MM/δ², built in by
        whitening the rows (:meth:`oed.features.GAPKernelFeatures.prior_whitening`), so
        selectors use it with λ = 1.
    delta : float
        GAP's ``delta`` (eV), the prior scale with ``prior="kmm"``.
    """

    kind: str = "soap"
    backend: str = "dscribe"
    forces: bool = False
    sigma_energy: float = 0.001
    sigma_force: float = 0.02
    r_cut: float = 5.0
    n_max: int = 8
    l_max: int = 6
    sigma: float = 0.5
    diagonal_radial: bool = False
    zeta: int = 4
    n_sparse: int = 200
    sparse_method: str = "fps"
    prior: str = "identity"
    delta: float = 1.0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings no feature map accepts."""
        if self.kind not in ("soap", "gap-kernel"):
            raise InputError(f"unknown feature kind {self.kind!r}; choose soap or gap-kernel")
        if not (self.sigma_energy > 0 and self.sigma_force > 0):
            raise InputError("sigma_energy and sigma_force must be > 0")
        if self.prior not in ("identity", "kmm"):
            raise InputError(f"unknown prior {self.prior!r}; choose identity or kmm")
        if self.prior == "kmm" and self.kind != "gap-kernel":
            raise InputError("prior='kmm' (the sparse GAP's K_MM/δ²) needs kind='gap-kernel'")
        if not self.delta > 0:
            raise InputError(f"delta must be > 0, got {self.delta!r}")
        if self.diagonal_radial and self.backend != "quippy":
            raise InputError("diagonal_radial SOAP needs the quippy back-end (backend='quippy')")


def design_features(
    pool: Sequence[Atoms],
    spec: FeatureSpec = FeatureSpec(),
    *,
    train: Sequence[Atoms] = (),
    target: Sequence[Atoms] = (),
    cache_dir=False,
    progress: bool = False,
) -> tuple[DesignBlocks, DesignBlocks | None, DesignBlocks | None]:
    """Design blocks of pool, training set and target set with one fitted feature map.

    The SOAP species cover all three sets; GAP sparse environments are chosen
    from the pool. Pool blocks are cached on disk under ``cache_dir``
    (``None``: the default cache folder; ``False``: no cache), keyed by the
    pool's content hash and ``spec``.

    Returns
    -------
    (pool_blocks, train_blocks or None, target_blocks or None)

    Raises
    ------
    InputError
        Bad ``spec``; :class:`~oed.errors.UnknownElementError` never (species
        are taken from the data).
    """
    spec.validate()
    species = species_of(list(pool) + list(train) + list(target))
    extra = {"diagonal_radial": True} if spec.diagonal_radial else {}
    descriptor = make_descriptor(spec.backend, r_cut=spec.r_cut, n_max=spec.n_max, l_max=spec.l_max,
                                 sigma=spec.sigma, species=species, **extra)
    fitted = {}

    def feature_map():
        if "map" not in fitted:
            if spec.kind == "soap":
                fitted["map"] = descriptor.fit(pool)
            else:
                from oed.features import GAPKernelFeatures

                fitted["map"] = GAPKernelFeatures(descriptor=descriptor, zeta=spec.zeta, n_sparse=spec.n_sparse,
                                                  sparse_method=spec.sparse_method).fit(pool)
        return fitted["map"]

    def blocks(frames):
        kw = {"forces": spec.forces, "sigma_energy": spec.sigma_energy, "sigma_force": spec.sigma_force,
              "progress": progress}
        if spec.kind == "soap":
            from oed.features import soap_design_blocks

            return soap_design_blocks(frames, feature_map(), **kw)
        blocks = feature_map().design_blocks(frames, **kw)
        if spec.prior == "kmm":
            if "whitening" not in fitted:
                fitted["whitening"] = feature_map().prior_whitening(spec.delta)
            blocks = DesignBlocks(blocks.rows @ fitted["whitening"], blocks.offsets)
        return blocks

    def cached(frames, role):
        if cache_dir is False:
            return blocks(frames)
        from oed.cache import cached_array

        key = {"role": role, "pool": pool_hash(pool), "frames": pool_hash(frames), "species": species,
               "spec": asdict(spec)}
        return cached_array(key, lambda: blocks(frames), cache_dir=cache_dir)

    X = cached(pool, "pool")
    X_train = cached(train, "train") if len(train) else None
    X_target = cached(target, "target") if len(target) else None
    return X, X_train, X_target


def design_labels(frames: Sequence[Atoms], spec: FeatureSpec = FeatureSpec()) -> np.ndarray | None:
    """Reference labels in design-row units, stacked like the design blocks, or None.

    Energy: E − N·mean(E/N) (the per-atom mean removed), divided by σ_E·N; forces (with
    ``spec.forces``): each component divided by σ_F. These are the targets of
    :func:`oed.forecast.calibrate` for the rows of :func:`design_features`.

    Returns
    -------
    ndarray, shape (n_rows,), or None
        None unless every configuration has an energy (and forces, when asked for).
    """
    from oed.io import reference_forces

    energies = [reference_energy(a) for a in frames]
    if not energies or any(e is None for e in energies):
        return None
    n = np.array([len(a) for a in frames], dtype=float)
    e = np.asarray(energies, dtype=float)
    e = e - n * np.mean(e / n)
    parts = []
    for atoms, ei, ni in zip(frames, e, n):
        parts.append([ei / (spec.sigma_energy * ni)])
        if spec.forces:
            f = reference_forces(atoms)
            if f is None:
                return None
            parts.append(f.reshape(-1) / spec.sigma_force)
    return np.concatenate(parts)


def train_energies(train: Sequence[Atoms]) -> np.ndarray | None:
    """Reference energies (eV) of a training set, or None unless every configuration has one."""
    energies = [reference_energy(a) for a in train]
    if not energies or any(e is None for e in energies):
        return None
    return np.asarray(energies, dtype=float)


def fit_selector(name: str, budget: int, X, *, X_train=None, X_target=None, y_train=None,
                 force_norms=None, seed: int | None = 0, reg: float = DEFAULT_REG, **params):
    """Build (:func:`oed.selectors.make_selector`) and fit the selector ``name`` for ``budget`` picks.

    Parameters
    ----------
    name : str
        Registered strategy (``oed.selectors.available()``).
    budget : int
        Number of picks.
    X, X_train, X_target : array (n, d) or DesignBlocks
        Pool, labelled set (optional) and target set (optional; only for
        strategies whose ``uses_target`` tag is True).
    y_train : array (n_train,), optional
        Training energies, eV; used by strategies whose ``uses_labels`` tag is
        True (info-gain), ignored by the label-free ones.
    force_norms : array (n_candidates,), optional
        ‖F‖ of every pool configuration, eV/Å (e.g. from a cheap model); only
        for strategies whose ``uses_force_norms`` tag is True (ggfps), which require it.
    seed, reg, **params
        As :func:`oed.selectors.make_selector`; ``reg`` defaults to :data:`DEFAULT_REG`.

    Returns
    -------
    The fitted selector (``selected_idx_``, ``gains_``, ``n_selected_``).

    Raises
    ------
    InputError
        Unknown strategy, a target set or force norms for a strategy that cannot use them.
    """
    selector = make_selector(name, budget, seed=seed, reg=reg, **params)
    if X_target is not None and not selector.uses_target:
        raise InputError(f"strategy {name!r} does not use a target set; use i-optimal or info-gain")
    extra = {}
    if selector.uses_force_norms:
        extra["force_norms"] = force_norms
    elif force_norms is not None:
        raise InputError(f"strategy {name!r} does not use force norms; use ggfps")
    return selector.fit(X, X_train=X_train, y_train=y_train, X_target=X_target, **extra)


@dataclass(frozen=True)
class Ranking:
    """Result of :func:`rank_pool`.

    Attributes
    ----------
    selected : ndarray of int, shape (k,)
        0-based pool indices in pick order.
    gains : ndarray, shape (k,)
        Gain of each pick as the strategy defines it (nats for D-optimal).
    log_det : float
        log det of the information matrix λI + Σ JᵀJ over training set and picks.
    strategy : str
    """

    selected: np.ndarray
    gains: np.ndarray
    log_det: float
    strategy: str


def _distinct(pool: Sequence[Atoms], train: Sequence[Atoms]) -> np.ndarray:
    """Indices of ``pool`` that are neither an earlier pool entry again nor in ``train``."""
    import warnings

    from oed.io import structure_hash

    trained = {structure_hash(a) for a in train}
    seen: set[str] = set()
    keep, repeats, known = [], 0, 0
    for i, atoms in enumerate(pool):
        key = structure_hash(atoms)
        if key in trained:
            known += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            keep.append(i)
    if repeats or known:
        parts = [f"repeats {repeats} configuration(s)" if repeats else "",
                 f"holds {known} configuration(s) of the training set" if known else ""]
        warnings.warn(f"the pool {' and '.join(p for p in parts if p)}: a repeat is a candidate once, "
                      "a training configuration not at all", stacklevel=3)
    return np.array(keep, dtype=int)


def rank_pool(
    pool: Sequence[Atoms],
    budget: int,
    *,
    strategy: str = "d-optimal",
    train: Sequence[Atoms] = (),
    target: Sequence[Atoms] = (),
    seed: int | None = 0,
    reg: float = DEFAULT_REG,
    spec: FeatureSpec = FeatureSpec(),
    cache_dir=False,
    progress: bool = False,
    force_norms=None,
) -> Ranking:
    """Pick ``budget`` configurations of ``pool`` with the named strategy.

    A configuration repeated in the pool (same structure hash), or already in ``train``, is
    a candidate once or not at all — a repeat buys no information — with a warning that
    counts them; indices stay those of ``pool``.

    ``force_norms`` (array of shape (len(pool),), eV/Å) is ‖F‖ of every pool configuration,
    from a cheap model, for strategies whose ``uses_force_norms`` tag is True (``ggfps``),
    which require it.

    Raises
    ------
    InputError
        Unknown strategy, bad budget or feature settings, a target for a
        strategy that ignores it, force norms missing for ``ggfps`` (checked before any
        feature is computed), given to another strategy, or not one per pool configuration.
    """
    from oed.selectors import selector_class

    if selector_class(strategy).uses_force_norms:
        if force_norms is None:
            raise InputError(f"strategy {strategy!r} weights picks by force norms: give one ||F|| (eV/Å) per pool "
                             "configuration (force_norms), e.g. from GFN2-xTB")
        force_norms = np.asarray(force_norms, dtype=float).reshape(-1)
        if len(force_norms) != len(pool):
            raise InputError(f"force_norms has {len(force_norms)} values for a pool of {len(pool)} configurations")
    elif force_norms is not None:
        raise InputError(f"strategy {strategy!r} does not use force norms; use ggfps")
    X, X_train, X_target = design_features(pool, spec, train=train, target=target, cache_dir=cache_dir,
                                           progress=progress)
    cand = _distinct(pool, train)
    selector = fit_selector(strategy, budget, X if len(cand) == len(pool) else X.subset(cand), X_train=X_train,
                            X_target=X_target, y_train=train_energies(train) if len(train) else None,
                            force_norms=None if force_norms is None else force_norms[cand], seed=seed, reg=reg)
    idx = cand[np.asarray(selector.selected_idx_, dtype=int)]
    picked = X.subset(idx).rows
    return Ranking(
        selected=idx,
        gains=np.asarray(selector.gains_, dtype=float),
        log_det=log_det_information(picked, reg=reg, X_train=None if X_train is None else X_train.rows),
        strategy=strategy,
    )
