"""Strategies: how a campaign picks its next configurations, conditioned on what is labelled.

A strategy has a ``label`` and ``select(k, candidates, labelled, ctx) -> pool indices`` (pick
order); ``model`` names the fitted model it needs (``None`` for label-free selectors). Three
kinds cover oed today:

- :class:`SelectorStrategy`: any oed selector (``oed.selectors``) in a feature space — summed
  SOAP, or the model's own GAP-kernel features (:meth:`loops.gap.GAPModel.feature_spec`), with
  energy or energy + force rows;
- :class:`VarianceStrategy` (``gap-variance``): largest predictive variance of the GAP so far;
- :class:`ModelSpaceStrategy` (``name@mace``): a selector on a fitted MACE's descriptors.

Strategies are written ``name[@space]`` (:func:`parse_strategy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from oed.design import DEFAULT_REG, FeatureSpec, design_features, fit_selector
from oed.errors import InputError
from oed.information import DesignBlocks
from oed.io import reference_energy
from oed.selectors import selector_class

__all__ = ["Features", "FixedStrategy", "ModelSpaceStrategy", "RandomStrategy", "RoundContext", "SelectorStrategy",
           "StrategySpec", "VarianceStrategy", "candidates", "eligible", "make_strategy", "parse_strategy", "select",
           "strategy_feature_spec"]

#: Feature spaces a strategy may name after "@": space -> (feature map, force rows).
SPACES = {
    "soap": ("soap", False),
    "soap+forces": ("soap", True),
    "gap-kernel": ("gap-kernel", False),
    "gap-kernel+forces": ("gap-kernel", True),
    # the same kernel features whitened by the GAP's sparse-GP prior K_MM/δ² (FeatureSpec prior="kmm")
    "gap-gp": ("gap-gp", False),
    "gap-gp+forces": ("gap-gp", True),
    "mace": ("mace", False),
}
#: Strategies that rank by a fitted model's uncertainty, and which model.
MODEL_STRATEGIES = {"gap-variance": "gap"}
#: Bias-aware selection with a cheap oracle (loops.lfab): driven by the GAP fitted so far, batches
#: clustered in an energy-row space (``lfab@soap``, ``lfab@gap-kernel``; default summed SOAP).
LFAB_STRATEGIES = ("lfab", "lfab-top", "lfab-energy")
MODEL_STRATEGIES.update(dict.fromkeys(LFAB_STRATEGIES, "gap"))


@dataclass(frozen=True)
class StrategySpec:
    """A strategy as written: ``name`` or ``name@space`` (space one of :data:`SPACES`).

    ``d-optimal@gap-kernel+forces`` is greedy D-optimal on the GAP's kernel features with
    energy and force rows. Without ``@space`` the run's default space applies.
    """

    label: str
    name: str
    space: str
    forces: bool

    @property
    def model(self) -> str | None:
        """The fitted model the strategy needs (``None``: label-free)."""
        return MODEL_STRATEGIES.get(self.name) or ("mace" if self.space == "mace" else None)


def parse_strategy(text: str, *, select_with: str = "soap", features: str = "energy") -> StrategySpec:
    """Parse ``name[@space]`` (see :class:`StrategySpec`).

    Raises
    ------
    InputError
        Unknown strategy or space; a space given to ``gap-variance``; force rows with MACE;
        ``lfab`` in a space other than soap or gap-kernel.
    """
    name, at, space = text.partition("@")
    if name not in MODEL_STRATEGIES:
        selector_class(name)
    if name in LFAB_STRATEGIES:
        space = space if at else "soap"
        if SPACES.get(space, (None, True))[1] or space == "mace":
            raise InputError(f"{name} clusters configurations in an energy-row space: soap or gap-kernel, "
                             f"got {space!r} in {text!r}")
        return StrategySpec(label=text, name=name, space=space, forces=False)
    if at:
        if name in MODEL_STRATEGIES:
            raise InputError(f"{name} selects by the model's predictive variance: it takes no feature space ({text!r})")
        if space not in SPACES:
            raise InputError(f"unknown feature space {space!r} in {text!r}; choose from: {', '.join(SPACES)}")
        kind, forces = SPACES[space]
    else:
        kind, forces = select_with, features == "forces"
    if kind == "mace" and forces:
        raise InputError("MACE descriptors give energy rows only: use features energy with select_with mace")
    return StrategySpec(label=text, name=name, space=kind, forces=forces)


def eligible(frames: Sequence[Atoms], *, log=None) -> np.ndarray:
    """Pool indices that are candidates: every configuration but isolated atoms (E0 references)
    and repeats (a structure hash seen earlier in the pool: picking it again would buy nothing).

    ``log`` gets one line with the number of repeats left out, when there are any.
    """
    from oed.io import structure_hash

    seen: set[str] = set()
    keep, repeats = [], 0
    for i, atoms in enumerate(frames):
        if len(atoms) < 2:
            continue
        key = structure_hash(atoms)
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        keep.append(i)
    if repeats and log is not None:
        log(f"warning: the pool repeats {repeats} configuration(s); each is a candidate once")
    return np.array(keep, dtype=int)


def candidates(allowed: Sequence[int], seed: int, fraction: float) -> np.ndarray:
    """Pool indices seed ``seed`` may pick from: a sorted random ``fraction`` of ``allowed``.

    The same for every strategy (a paired comparison), independent of the strategy list.
    """
    allowed = np.asarray(allowed, dtype=int)
    if fraction >= 1:
        return allowed
    rng = np.random.default_rng([seed, 20251121])
    n = max(1, int(round(fraction * len(allowed))))
    return np.sort(rng.choice(allowed, size=n, replace=False))


def per_atom_energies(frames: Sequence[Atoms], e0s: Mapping[str, float]) -> np.ndarray:
    """(E − Σ E0) / N per configuration, eV/atom: a label comparable across compositions."""
    return np.array([(reference_energy(a) - sum(e0s[s] for s in a.get_chemical_symbols())) / len(a)
                     for a in frames])


@dataclass
class Features:
    """Design blocks of a pool (and target set) per feature space, computed once per process.

    On disk under ``cache_dir`` too, so worker processes read what the parent computed.
    """

    pool: Sequence[Atoms]
    target: Sequence[Atoms] = ()
    cache_dir: Path | None = None
    progress: bool = False
    _memo: dict = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memo"] = {}  # large arrays stay behind; the worker reads the disk cache
        return state

    def extend(self, frames: Sequence[Atoms]) -> None:
        """Append configurations to the pool (explored frames); features are recomputed when asked."""
        self.pool = list(self.pool) + list(frames)
        self._memo.clear()

    def get(self, spec: FeatureSpec) -> tuple[DesignBlocks, DesignBlocks | None]:
        """``(X_pool, X_target)`` in ``spec``'s space (``X_target`` None without a target)."""
        if spec not in self._memo:
            X, _, X_target = design_features(self.pool, spec, target=self.target,
                                             cache_dir=self.cache_dir or False, progress=self.progress)
            self._memo[spec] = (X, X_target)
        return self._memo[spec]


@dataclass
class RoundContext:
    """What a strategy may look at when it picks: never a label of an unpicked configuration.

    Attributes
    ----------
    pool : list of ase.Atoms
        Bare candidate configurations (no labels).
    labels : dict
        Pool index → labelled configuration, for the labelled indices only.
    e0s : dict
        Element → isolated-atom energy (eV).
    seed : int
        This round's random seed.
    model : fitted model or None
        The model trained on the labels so far, for strategies that need one.
    features : Features
    """

    pool: Sequence[Atoms]
    labels: Mapping[int, Atoms]
    e0s: Mapping[str, float]
    seed: int
    features: Features
    model: Any = None


def select(name: str, k: int, X: DesignBlocks, cand: np.ndarray, labelled: Sequence[int] = (), *,
           seed: int, reg: float = DEFAULT_REG, X_target=None, y_train=None) -> list[int]:
    """Pick ``k`` pool indices from ``cand`` with selector ``name``, conditioned on ``labelled``.

    ``X`` holds the design blocks of the whole pool; returns pool indices in pick order.
    """
    selector = fit_selector(name, min(k, len(cand)), X.subset(cand),
                            X_train=X.subset(list(labelled)) if len(labelled) else None,
                            seed=seed, reg=reg, X_target=X_target, y_train=y_train)
    return [int(cand[j]) for j in selector.selected_idx_]


@dataclass(frozen=True)
class SelectorStrategy:
    """An oed selector in a fixed feature space, conditioned on the labelled configurations.

    Parameters
    ----------
    label : str
    name : str
        Selector name (``oed.selectors.available()``).
    spec : FeatureSpec
        Feature map and information rows.
    reg : float
        Prior precision of the information matrix.
    use_target : bool
        Pass the target set's features to selectors that aim at a target (I-optimal, info-gain).
    """

    label: str
    name: str
    spec: FeatureSpec
    reg: float = DEFAULT_REG
    use_target: bool = True
    model: str | None = None

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx: RoundContext) -> list[int]:
        cls = selector_class(self.name)
        X, X_target = ctx.features.get(self.spec)
        y = None
        if labelled and cls.uses_labels:
            y = per_atom_energies([ctx.labels[i] for i in labelled], ctx.e0s)
        target = X_target if (self.use_target and X_target is not None and cls.uses_target) else None
        return select(self.name, k, X, cand, labelled, seed=ctx.seed, reg=self.reg, X_target=target, y_train=y)


@dataclass(frozen=True)
class RandomStrategy:
    """Uniform random picks: the first design of a model-driven strategy (no model exists yet)."""

    label: str = "random"
    model: str | None = None

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx: RoundContext) -> list[int]:
        order = np.random.default_rng(ctx.seed).permutation(len(cand))[:k]
        return [int(i) for i in np.asarray(cand)[order]]


@dataclass(frozen=True)
class FixedStrategy:
    """A design given in advance (pool indices in order): the first ``k`` not yet picked.

    For experiments whose training sets are built by hand (tutorials 4 and 5: molecules ×
    conformers, held-out compositions), so they run through the same campaign engine.
    """

    label: str
    order: tuple[int, ...]
    model: str | None = None

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx: RoundContext) -> list[int]:
        allowed = set(int(i) for i in cand)
        return [i for i in self.order if i in allowed][:k]


@dataclass(frozen=True)
class VarianceStrategy:
    """The ``k`` candidates with the largest predicted energy variance of a fitted GAP.

    Uncertainty sampling (Settles, "Active Learning", Morgan & Claypool 2012, §2.1) with
    quippy's ``local_gap_variance`` summed over atoms. Batches are the top k, not diversified.
    """

    label: str = "gap-variance"
    model: str | None = "gap"

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx: RoundContext) -> list[int]:
        variance = np.asarray(ctx.model.predict_variance([ctx.pool[i] for i in cand]), dtype=float)
        order = np.argsort(-variance, kind="stable")[:k]
        return [int(cand[j]) for j in order]


def mace_features(model, frames: Sequence[Atoms], sigma_energy: float = 0.001) -> DesignBlocks:
    """Energy rows in a fitted MACE's feature space: the unit-normalised mean node descriptor / σ_E.

    Built like summed-SOAP rows (a size-intensive unit-scale vector divided by the expected
    energy error per atom), so the information matrix and the prior precision keep their scale.
    """
    q = np.asarray(model.descriptors(list(frames)), dtype=float)
    q = q / np.array([len(a) for a in frames], dtype=float)[:, None]
    q = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-300, None)
    return DesignBlocks.from_features(q / sigma_energy)


@dataclass(frozen=True)
class ModelSpaceStrategy:
    """An oed selector on the descriptors of the model fitted so far (MACE)."""

    label: str
    name: str
    reg: float = DEFAULT_REG
    model: str | None = "mace"

    def select(self, k: int, cand: np.ndarray, labelled: Sequence[int], ctx: RoundContext) -> list[int]:
        X = mace_features(ctx.model, ctx.pool)
        return select(self.name, k, X, cand, labelled, seed=ctx.seed, reg=self.reg)


def strategy_feature_spec(strategy: StrategySpec, model: str = "gap", settings: Any = None) -> FeatureSpec | None:
    """Feature map of a parsed strategy (``None``: MACE descriptors or GAP variance, made per round).

    ``gap-kernel`` features are the ones the GAP itself owns
    (:meth:`loops.gap.GAPModel.feature_spec`: its SOAP, ζ, sparse method and sparse-point
    counts, rows scaled by its expected errors), so selection works in the model's feature
    space; with another model, those of a GAP with default settings. ``gap-gp`` spaces
    whiten them by the GAP's sparse-GP prior K_MM/δ² (``FeatureSpec(prior="kmm")``).
    ``oed compare`` and ``oed loop run`` both resolve their strategies' spaces here.

    Parameters
    ----------
    strategy : StrategySpec
    model : str
        The model the run trains (``loops.models.available()``).
    settings : dataclass or None
        Its settings (``None``: defaults); used only when ``model`` is ``"gap"``.

    Raises
    ------
    SetupError
        GAP settings whose kernel features cannot be built (:meth:`loops.gap.GAPModel.feature_spec`).
    """
    if strategy.model is not None and strategy.name not in LFAB_STRATEGIES:
        return None  # lfab is model-driven too, but clusters its batches in a feature space
    if strategy.space in ("gap-kernel", "gap-gp"):
        from loops.models import make_model

        gap = make_model("gap", settings if model == "gap" else None)
        return gap.feature_spec(strategy.forces, prior="kmm" if strategy.space == "gap-gp" else "identity")
    return FeatureSpec(kind=strategy.space, forces=strategy.forces)


def make_strategy(spec: StrategySpec, feature_spec: FeatureSpec | None, *, reg: float = DEFAULT_REG,
                  run_dir: Path | None = None, seed: int = 0):
    """The strategy object of a parsed ``name[@space]``; ``feature_spec`` for selector strategies
    (and the clustering space of ``lfab``); ``run_dir`` and the campaign ``seed`` for the strategies
    that read a cheap oracle (``lfab``; ``ggfps``, whose force norms come from it: :mod:`loops.lfab`)."""
    if spec.name in LFAB_STRATEGIES:
        from loops.lfab import make_lfab

        return make_lfab(spec, feature_spec, run_dir=run_dir, seed=seed)
    if spec.name in MODEL_STRATEGIES:
        return VarianceStrategy(label=spec.label)
    if spec.space == "mace":
        return ModelSpaceStrategy(label=spec.label, name=spec.name, reg=reg)
    if feature_spec is None:
        raise InputError(f"strategy {spec.label!r} needs a feature space")
    if selector_class(spec.name).uses_force_norms:  # ggfps: force norms from the cheap oracle
        from loops.lfab import ForceNormStrategy

        return ForceNormStrategy(label=spec.label, name=spec.name, spec=feature_spec, reg=reg,
                                 run_dir=None if run_dir is None else Path(run_dir), seed=seed)
    return SelectorStrategy(label=spec.label, name=spec.name, spec=feature_spec, reg=reg)
