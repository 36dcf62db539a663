"""Compare selection strategies on a labelled pool: strategies × seeds × budgets, ID and OOD.

The question a user asks is *which selection strategy buys the most accuracy per DFT label, in
distribution and out of it, for the model I will train?* :func:`run_compare` answers it with a
grid of *cells* — (strategy, seed, budget) — each one a model fitted on the configurations the
strategy picked and scored on every test file:

- **Oracle.** ``"pool"`` replays the pool's own labels (:class:`ReplayOracle`): a label is
  revealed only for a configuration that has been picked; selectors see bare geometries.
  ``"pyscf:xc/basis"`` (or ``"xtb:gfn2-xtb"``) labels picks live (:class:`LiveOracle`), each
  label committed to ``labels.db`` once and never recomputed. The shipped ethanol labels equal
  PySCF PBE/def2-SVP to 0.2 meV/Å (DESIGN.md §4), so replay is a faithful, fast stand-in.
- **Modes.** ``oneshot``: each strategy ranks the seed's candidates once, label-free, and the
  first k picks train the model at budget k. ``sequential``: budgets are rounds; each round's
  batch is selected conditioned on what is labelled (GP hyperparameters refitted on the labels
  for ``info-gain``; the model of the previous round drives ``gap-variance`` and
  ``--select-with mace``), as the active-learning loop does.
- **Seeds.** Seed s draws its own ``pool_fraction`` of the pool as the candidate set, shared by
  every strategy (a paired design: deterministic strategies get a spread too), seeds the
  random selectors, and the model (GAP's sparse-point draw, MACE's initialisation).
- **Selection space** (``select_with``): ``soap`` (summed SOAP), ``gap-kernel`` (the GAP's own
  kernel features, with force rows when ``features="forces"``), or ``mace`` (descriptors of the
  MACE trained on the labels so far; sequential only). Training model (``model``) is separate,
  so data chosen with one algorithm can be scored on another (Niblett et al., JCTC 2024,
  arXiv:2409.05590).

Everything lives in the run directory, so a rerun resumes and a finished cell is never redone:

- ``config.json``                 the settings that fix the cells; a rerun with others is refused
- ``selections/<strategy>/seed<s>.json``   picks in order (written before any label is used)
- ``cells/<strategy>/seed<s>/k<budget>.json``   one finished cell: its training indices and errors
- ``labels.db``                   live labels (ase.db, SQLite)
- ``results.csv``, ``summary.md``, ``learning_curve_<test set>.png``   rebuilt from the cells

Cells run in parallel on local processes, or on a Dask cluster when a client is given (its
workers must see the run directory: a ``LocalCluster`` or a shared file system).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from oed.design import DEFAULT_REG, FeatureSpec, design_features, fit_selector
from oed.errors import InputError, UnknownElementError
from oed.information import DesignBlocks
from oed.io import (
    REF_ENERGY,
    REF_FORCES,
    atomic_write_text,
    pool_hash,
    read_structures,
    reference_energy,
    reference_forces,
    structure_hash,
)
from oed.selectors import selector_class
from loops.rundir import check_settings, read_json

Log = Callable[[str], None]

MODES = ("oneshot", "sequential")
SELECT_WITH = ("soap", "gap-kernel", "mace")
#: Feature spaces a strategy may name after "@": space -> (feature map, force rows).
SPACES = {
    "soap": ("soap", False),
    "soap+forces": ("soap", True),
    "gap-kernel": ("gap-kernel", False),
    "gap-kernel+forces": ("gap-kernel", True),
    "mace": ("mace", False),
}
#: Strategies that need a model fitted on the labels so far, and which model.
MODEL_STRATEGIES = {"gap-variance": "gap"}
#: info keys a bare pool configuration keeps (everything else could carry a label).
_KEPT_INFO = ("config_type", "charge")


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategySpec:
    """One strategy of a comparison: a selector (or ``gap-variance``) in a feature space.

    Written ``name`` or ``name@space`` with space one of :data:`SPACES` — e.g.
    ``d-optimal@gap-kernel+forces`` is greedy D-optimal on the GAP's kernel features with
    energy and force rows. Without ``@space`` the run's ``select_with``/``features`` apply.
    """

    label: str
    name: str
    space: str
    forces: bool

    @property
    def model_driven(self) -> bool:
        """Needs a model fitted on the labels so far (sequential mode only)."""
        return self.name in MODEL_STRATEGIES or self.space == "mace"


def parse_strategy(text: str, *, select_with: str = "soap", features: str = "energy") -> StrategySpec:
    """Parse ``name[@space]`` (see :class:`StrategySpec`).

    Raises
    ------
    InputError
        Unknown strategy or space; a space given to ``gap-variance``; force rows with MACE.
    """
    name, at, space = text.partition("@")
    if name not in MODEL_STRATEGIES:
        selector_class(name)
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


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison (the CLI builds this and calls :func:`run_compare`).

    Parameters
    ----------
    pool : Path
        Candidate configurations (extxyz). With the ``"pool"`` oracle every one needs a
        reference energy (eV) and forces (eV/Å).
    tests : tuple of Path
        Test files; each is scored on what it has (energies, forces), and again per
        ``config_type`` when it holds several.
    out : Path
        Run directory (rerun to resume or to add strategies, seeds or budgets).
    strategies : tuple of str
        Selector names (``oed.selectors.available()``) and ``"gap-variance"`` (largest GAP
        predictive variance, sequential only), each optionally with a feature space:
        ``name@space`` (:class:`StrategySpec`).
    budgets : tuple of int
        Training-set sizes.
    n_seeds : int
        Seeds 0 … n_seeds − 1.
    model : str
        Model trained and scored (``loops.models.available()``: ``gap``, ``mace``).
    model_settings : dataclass or None
        Its settings (``None``: defaults).
    select_with : {"soap", "gap-kernel", "mace"}
        Feature space of strategies written without ``@space``.
    features : {"energy", "forces"}
        Their information rows: energy only, or energy + 3N force rows.
    mode : {"oneshot", "sequential"}
    oracle : str
        ``"pool"``, ``"pyscf:xc/basis"`` or ``"xtb:gfn2-xtb"``.
    pool_fraction : float in (0, 1]
        Fraction of the pool each seed draws as its candidate set.
    target : Path or None
        Target configurations for ``i-optimal``/``info-gain`` (default: the candidates).
    e0s_file : Path or None
        Isolated-atom energies (extxyz of single atoms, eV). Default: isolated atoms in the pool
        (``config_type=IsolatedAtom``) for the pool oracle, computed by the labeller for a live one.
    test_limit : int or None
        Score at most this many configurations per test file and ``config_type`` (evenly spaced).
    workers : int or None
        Parallel cells (default: one per core).
    reg : float
        Prior precision λ of the information matrix.
    keep_models : bool
        Keep each cell's fitted model files (default: deleted once scored).
    """

    pool: Path
    tests: tuple[Path, ...]
    out: Path
    strategies: tuple[str, ...] = ("random", "fps", "d-optimal")
    budgets: tuple[int, ...] = (25, 50, 100, 200)
    n_seeds: int = 5
    model: str = "gap"
    model_settings: Any = None
    select_with: str = "soap"
    features: str = "energy"
    mode: str = "oneshot"
    oracle: str = "pool"
    pool_fraction: float = 0.8
    target: Path | None = None
    e0s_file: Path | None = None
    test_limit: int | None = None
    workers: int | None = None
    reg: float = DEFAULT_REG
    keep_models: bool = False

    def validate(self) -> None:
        """Check the settings before any work.

        Raises
        ------
        InputError
            Empty or repeated strategies, budgets or test names; a non-positive budget or
            seed count; an unknown strategy, model, mode, feature space or oracle; a
            combination that cannot work (model-driven selection in oneshot mode).
        """
        from loops.models import model_class

        if not self.strategies:
            raise InputError("give at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise InputError(f"strategies repeated: {', '.join(self.strategies)}")
        if self.select_with not in SELECT_WITH:
            raise InputError(f"select_with must be one of {', '.join(SELECT_WITH)}, got {self.select_with!r}")
        if self.features not in ("energy", "forces"):
            raise InputError(f"features must be energy or forces, got {self.features!r}")
        specs = self.specs()
        if not self.budgets:
            raise InputError("give at least one budget")
        if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in self.budgets):
            raise InputError(f"budgets must be positive integers, got {self.budgets}")
        if len(set(self.budgets)) != len(self.budgets):
            raise InputError(f"budgets repeated: {self.budgets}")
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 1:
            raise InputError(f"the number of seeds must be a positive integer, got {self.n_seeds!r}")
        model_class(self.model)
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "oneshot":
            driven = [s.label for s in specs if s.model_driven]
            if driven:
                raise InputError(f"{', '.join(driven)} needs a model trained on labels: use mode sequential")
        parse_oracle(self.oracle)
        if not (isinstance(self.pool_fraction, (int, float)) and 0 < self.pool_fraction <= 1):
            raise InputError(f"pool_fraction must be in (0, 1], got {self.pool_fraction!r}")
        if not self.tests:
            raise InputError("give at least one test file")
        names = [Path(p).stem for p in self.tests]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"test files must have distinct names, repeated: {', '.join(dup)}")
        if self.test_limit is not None and self.test_limit < 1:
            raise InputError(f"test_limit must be >= 1, got {self.test_limit}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if not self.reg > 0:
            raise InputError(f"reg must be > 0, got {self.reg}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.n_seeds))

    def settings(self):
        """The model settings in use (the back-end's defaults when none were given)."""
        from loops.models import model_class

        return self.model_settings if self.model_settings is not None else model_class(self.model).settings_class()

    def specs(self) -> list[StrategySpec]:
        """The strategies, parsed (:func:`parse_strategy`)."""
        return [parse_strategy(s, select_with=self.select_with, features=self.features) for s in self.strategies]

    def feature_spec(self, strategy: StrategySpec) -> FeatureSpec | None:
        """Feature map of a strategy (``None``: MACE descriptors or GAP variance, made per round).

        ``gap-kernel`` features use the GAP's own SOAP (quippy, the same settings, radially
        diagonal when the GAP is) and ζ, so selection works in the model's feature space; with
        another model, the GAP defaults'.
        """
        if strategy.model_driven:
            return None
        if strategy.space == "gap-kernel":
            from loops.gap import GAPSettings

            g = self.settings() if self.model == "gap" else GAPSettings()
            return FeatureSpec(kind="gap-kernel", backend="quippy", forces=strategy.forces, r_cut=g.cutoff,
                               n_max=g.n_max, l_max=g.l_max, sigma=g.atom_sigma,
                               diagonal_radial=g.diagonal_radial, zeta=g.zeta)
        return FeatureSpec(kind=strategy.space, forces=strategy.forces)

    def fingerprint(self, pool_digest: str, target_digest: str | None) -> dict:
        """Settings that fix every cell; strategies, seeds and budgets may grow between runs."""
        return {
            "pool": pool_digest,
            "tests": sorted(Path(p).stem for p in self.tests),
            "model": self.model,
            "model_settings": asdict(self.settings()),
            "select_with": self.select_with,
            "features": self.features,
            "mode": self.mode,
            "oracle": self.oracle,
            "pool_fraction": self.pool_fraction,
            "target": target_digest,
            "test_limit": self.test_limit,
            "reg": self.reg,
        }


def parse_oracle(spec: str) -> tuple[str, str | None]:
    """``"pool"`` → ("pool", None); ``"pyscf:pbe/def2-svp"`` → ("pyscf", "pbe/def2-svp").

    Raises
    ------
    InputError
        Anything else (an unknown back-end, or a live oracle without a method).
    """
    if spec == "pool":
        return "pool", None
    backend, _, method = spec.partition(":")
    if backend not in ("pyscf", "xtb") or not method:
        raise InputError(f"oracle must be 'pool', 'pyscf:xc/basis' or 'xtb:gfn2-xtb', got {spec!r}")
    return backend, method


# -- oracles ---------------------------------------------------------------------------------------
def bare(atoms: Atoms, index: int) -> Atoms:
    """A configuration with no label: numbers, positions, cell, pbc, ``config_type``, charge."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for key in _KEPT_INFO:
        if key in atoms.info:
            out.info[key] = atoms.info[key]
    out.info["oed_pool_index"] = int(index)
    return out


class ReplayOracle:
    """A labelled pool acting as the oracle: a label is revealed only when asked for.

    ``pool`` holds bare copies (:func:`bare`) — what selectors see. :meth:`label` returns
    labelled copies of the requested configurations and records them in ``revealed_``.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The labelled pool: every configuration with a reference energy (eV) and forces (eV/Å).

    Raises
    ------
    InputError
        A configuration without an energy or forces (its index is named).
    """

    name = "pool"

    def __init__(self, frames: Sequence[Atoms]) -> None:
        self._labels: list[tuple[float, np.ndarray]] = []
        for i, atoms in enumerate(frames):
            e, f = reference_energy(atoms), reference_forces(atoms)
            if e is None or f is None:
                lacking = " and ".join(w for w, v in (("energy", e), ("forces", f)) if v is None)
                raise InputError(f"pool configuration {i} has no reference {lacking}: the pool oracle "
                                 "replays published labels (use --oracle pyscf:xc/basis to label live)")
            self._labels.append((float(e), np.array(f, dtype=float)))
        self.pool = [bare(a, i) for i, a in enumerate(frames)]
        self.revealed_: set[int] = set()

    def label(self, indices: Iterable[int]) -> dict[int, Atoms | None]:
        """Labelled copies (``REF_energy``, ``REF_forces``) of pool configurations ``indices``."""
        out = {}
        for i in indices:
            i = int(i)
            atoms = self.pool[i].copy()
            energy, forces = self._labels[i]
            atoms.info[REF_ENERGY] = energy
            atoms.arrays[REF_FORCES] = forces.copy()
            self.revealed_.add(i)
            out[i] = atoms
        return out


class LiveOracle:
    """Labels picks with a reference method as they are needed, each one once.

    Labels go to an ase.db :class:`~loops.store.LabelStore` keyed by structure hash the moment
    they exist; a configuration with a row (label or failure) is never sent again.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The pool (any labels it carries are ignored).
    backend, method : str
        ``"pyscf"`` with ``"xc/basis"``, or ``"xtb"`` with ``"gfn2-xtb"``/``"gfn1-xtb"``.
    store_path : Path
        The ase.db file.
    workers : int or None
        Labelling processes; ``client``: a Dask client instead.
    """

    def __init__(self, frames: Sequence[Atoms], backend: str, method: str, store_path: Path, *,
                 workers: int | None = None, client=None, progress: bool = True) -> None:
        from loops.store import LabelStore

        self.backend, self.workers, self.client, self.progress = backend, workers, client, progress
        if backend == "pyscf":
            from loops.labelers import parse_level_of_theory

            xc, basis = parse_level_of_theory(method)
            self.method = f"{xc}/{basis}"
        else:
            self.method = method.lower()
        self.name = f"{backend}:{self.method}"
        self.pool = [bare(a, i) for i, a in enumerate(frames)]
        self._keys = [structure_hash(a) for a in self.pool]
        self._store = LabelStore(store_path, self.name)
        self.revealed_: set[int] = set()

    def _label_many(self, frames, **kw):
        if self.backend == "pyscf":
            from loops.labelers import label_many

            return label_many(frames, method=self.method, **kw)
        from loops.xtb import label_many_xtb

        return label_many_xtb(frames, method=self.method, **kw)

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        """Isolated-atom energies (eV) at the oracle's level of theory."""
        if self.backend == "pyscf":
            from loops.labelers import isolated_atom_energies

            return isolated_atom_energies(species, method=self.method)
        from loops.xtb import isolated_atom_energies_xtb

        return isolated_atom_energies_xtb(species, method=self.method)

    def label(self, indices: Iterable[int]) -> dict[int, Atoms | None]:
        """Labelled configurations (``None`` where the calculation failed); labels what is missing."""
        indices = sorted({int(i) for i in indices})
        status = self._store.status()
        todo = [i for i in indices if self._keys[i] not in status]
        if todo:
            def commit(result, _todo=todo):
                i = _todo[result.index]
                self._store.add(self._keys[i], atoms=result.atoms if result.ok else self.pool[i],
                                pool_index=i, round=0, seconds=result.seconds, error=result.error)

            self._label_many([self.pool[i] for i in todo], workers=self.workers, client=self.client,
                             progress=self.progress, on_result=commit)
        wanted = {self._keys[i]: i for i in indices}
        labelled = {}
        for atoms in self._store.labelled(keys=set(wanted)):
            i = wanted[structure_hash(atoms)]
            out = self.pool[i].copy()
            out.info[REF_ENERGY] = float(atoms.info[REF_ENERGY])
            out.arrays[REF_FORCES] = np.array(atoms.arrays[REF_FORCES])
            labelled[i] = out
        self.revealed_.update(indices)
        return {i: labelled.get(i) for i in indices}


def make_oracle(spec: str, frames: Sequence[Atoms], out: Path, *, workers=None, client=None, progress=True):
    """The oracle named by ``spec`` over ``frames`` (see :func:`parse_oracle`)."""
    backend, method = parse_oracle(spec)
    if backend == "pool":
        return ReplayOracle(frames)
    return LiveOracle(frames, backend, method, out / "labels.db", workers=workers, client=client, progress=progress)


# -- test sets, E0s --------------------------------------------------------------------------------
def subsample(frames: list, limit: int | None) -> list:
    """At most ``limit`` frames of each ``config_type``, evenly spaced (all when ``limit`` is None).

    Per config_type, so that a small group (145 methanol among 1000 ethanol) keeps its share.
    """
    if limit is None:
        return frames
    groups: dict[str, list[int]] = {}
    for i, atoms in enumerate(frames):
        groups.setdefault(str(atoms.info.get("config_type", "")), []).append(i)
    keep = []
    for idx in groups.values():
        if len(idx) > limit:
            idx = [idx[j] for j in np.linspace(0, len(idx) - 1, limit).round().astype(int)]
        keep += idx
    return [frames[i] for i in sorted(keep)]


@functools.lru_cache(maxsize=16)
def _read_test(path: str, limit: int | None, mtime: float) -> tuple[Atoms, ...]:
    # One read per worker process and file; mtime in the key so an edited file is re-read.
    return tuple(subsample(read_structures(path, what="test set"), limit))


def load_test(path: str | os.PathLike, limit: int | None) -> list[Atoms]:
    """A test file's configurations (cached per process), subsampled to ``limit``."""
    p = Path(path)
    return list(_read_test(str(p.resolve()), limit, p.stat().st_mtime if p.exists() else 0.0))


def _e0s_from_file(path: Path, species: Sequence[str]) -> dict[str, float]:
    e0s = {}
    for atoms in read_structures(path, what="isolated-atoms file"):
        energy = reference_energy(atoms)
        if len(atoms) == 1 and energy is not None:
            e0s[atoms.get_chemical_symbols()[0]] = float(energy)
    missing = [s for s in species if s not in e0s]
    if missing:
        raise InputError(f"{path} has no isolated-atom energy for {', '.join(missing)}")
    return {s: e0s[s] for s in species}


def resolve_e0s(config: CompareConfig, frames: Sequence[Atoms], species: Sequence[str], oracle) -> dict[str, float]:
    """E0s from ``--e0s``, else isolated atoms in a replayed pool, else the live labeller.

    Raises
    ------
    InputError
        A replayed pool without isolated atoms and no ``e0s_file``: E0s cannot be told apart from
        a pool of one composition, so they must come from somewhere.
    """
    if config.e0s_file is not None:
        return _e0s_from_file(Path(config.e0s_file), species)
    if isinstance(oracle, LiveOracle):
        return oracle.e0s(species)
    e0s = {}
    for atoms in frames:
        if len(atoms) == 1 and reference_energy(atoms) is not None:
            e0s[atoms.get_chemical_symbols()[0]] = float(reference_energy(atoms))
    missing = [s for s in species if s not in e0s]
    if missing:
        raise InputError(f"no isolated-atom energy (E0) for {', '.join(missing)}: give --e0s FILE "
                         "(extxyz of single atoms at the pool's level of theory)")
    return {s: e0s[s] for s in species}


# -- the cell: fit a model on labelled configurations and score it ------------------------------------
def _limit_threads(threads: int) -> None:
    """Give a worker its share of the cores (BLAS, OpenMP, torch; gap_fit via the environment)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def score(model, tests: Mapping[str, str], limit: int | None) -> dict[str, dict]:
    """Errors of a fitted model on every test file, and per ``config_type`` within a file.

    Returns ``{test_set: metrics}`` with test_set ``<file stem>`` and ``<file stem>:<config_type>``.
    """
    from loops.evaluate import evaluate_groups

    out = {}
    for name, path in tests.items():
        for group, metrics in evaluate_groups(model, load_test(path, limit)).items():
            out[name if group is None else f"{name}:{group}"] = metrics
    return out


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to fit and score one cell (picklable)."""

    strategy: str
    seed: int
    budget: int
    train_idx: tuple[int, ...]
    n_failed: int
    train: tuple[Atoms, ...]
    model: str
    settings: Any
    e0s: dict
    tests: dict
    test_limit: int | None
    out: str
    keep_models: bool


def cell_path(out: Path, strategy: str, seed: int, budget: int) -> Path:
    return Path(out) / "cells" / strategy / f"seed{seed}" / f"k{budget}.json"


def run_cell(task: CellTask, fitted=None) -> dict:
    """Fit (unless ``fitted`` is given) and score one cell; writes its JSON atomically.

    Returns the cell record: strategy, seed, budget, train (pool indices), n_failed,
    fit_seconds, score_seconds and errors {test_set: metrics}.
    """
    from loops.models import make_model

    workdir = Path(task.out) / "models" / task.strategy / f"seed{task.seed}" / f"k{task.budget}"
    t0 = time.perf_counter()
    model = fitted
    if model is None:
        model = make_model(task.model, task.settings, seed=task.seed)
        model.fit(list(task.train), e0s=task.e0s, workdir=workdir)
    t1 = time.perf_counter()
    errors = score(model, task.tests, task.test_limit)
    record = {
        "strategy": task.strategy,
        "seed": task.seed,
        "budget": task.budget,
        "train": list(task.train_idx),
        "n_failed": task.n_failed,
        "fit_seconds": round(t1 - t0, 2),
        "score_seconds": round(time.perf_counter() - t1, 2),
        "errors": errors,
    }
    atomic_write_text(cell_path(Path(task.out), task.strategy, task.seed, task.budget), json.dumps(record, indent=1))
    if fitted is None and not task.keep_models:
        shutil.rmtree(workdir, ignore_errors=True)  # a fit's files are large; the errors are kept
    return record


def _run_cell_in_worker(task: CellTask, threads: int) -> dict:
    _limit_threads(threads)
    return run_cell(task)


def read_cell(out: Path, strategy: str, seed: int, budget: int, train_idx: Sequence[int] | None = None) -> dict | None:
    """A finished cell, or None if absent, unreadable, or trained on other picks than ``train_idx``."""
    path = cell_path(out, strategy, seed, budget)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if train_idx is not None and record.get("train") != [int(i) for i in train_idx]:
        return None  # the selection changed since (e.g. a larger budget re-ran exchange)
    return record


# -- selection -------------------------------------------------------------------------------------
def candidates(eligible: Sequence[int], seed: int, fraction: float) -> np.ndarray:
    """Pool indices seed ``seed`` may pick from: a sorted random ``fraction`` of ``eligible``.

    The same for every strategy (paired comparison); independent of the strategy list.
    """
    eligible = np.asarray(eligible, dtype=int)
    if fraction >= 1:
        return eligible
    rng = np.random.default_rng([seed, 20251121])
    n = max(1, int(round(fraction * len(eligible))))
    return np.sort(rng.choice(eligible, size=n, replace=False))


def eligible(frames: Sequence[Atoms]) -> np.ndarray:
    """Pool indices that are candidates: every configuration but isolated atoms (E0 references)."""
    return np.array([i for i, a in enumerate(frames) if len(a) > 1], dtype=int)


def _accepts(strategy: str, parameter: str) -> bool:
    return parameter in inspect.signature(selector_class(strategy).fit).parameters


def per_atom_energies(frames: Sequence[Atoms], e0s: Mapping[str, float]) -> np.ndarray:
    """(E − Σ E0) / N per configuration, eV/atom: a label comparable across compositions."""
    return np.array([(reference_energy(a) - sum(e0s[s] for s in a.get_chemical_symbols())) / len(a)
                     for a in frames])


def select(strategy: str, k: int, X: DesignBlocks, cand: np.ndarray, *, labelled: Sequence[int] = (),
           seed: int, reg: float, X_target: DesignBlocks | None = None, y_train=None) -> list[int]:
    """Pick ``k`` pool indices from ``cand`` with a selector, conditioned on ``labelled``.

    Returns pool indices in pick order.
    """
    kwargs = {}
    if X_target is not None and _accepts(strategy, "X_target"):
        kwargs["X_target"] = X_target
    if y_train is not None and _accepts(strategy, "y_train"):
        kwargs["y_train"] = y_train
    selector = fit_selector(strategy, min(k, len(cand)), X.subset(cand),
                            X_train=X.subset(list(labelled)) if len(labelled) else None,
                            seed=seed, reg=reg, **kwargs)
    return [int(cand[j]) for j in selector.selected_idx_]


def select_by_variance(model, frames: Sequence[Atoms], cand: np.ndarray, k: int) -> list[int]:
    """The ``k`` candidates with the largest predicted energy variance of a fitted GAP.

    Uncertainty sampling (Settles, "Active Learning", Morgan & Claypool 2012, §2.1) with
    quippy's ``local_gap_variance`` summed over atoms. Batches are the top k, not diversified.
    """
    variance = np.asarray(model.predict_variance([frames[i] for i in cand]), dtype=float)
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


# -- running ---------------------------------------------------------------------------------------
@dataclass
class _Context:
    """What a chain or cell needs besides its own strategy and seed (picklable)."""

    config: CompareConfig
    pool: list  # bare frames
    oracle: Any
    e0s: dict
    tests: dict
    budgets: tuple[int, ...]
    target: tuple = ()  # bare target frames, for i-optimal / info-gain


def _selection_path(out: Path, strategy: str, seed: int) -> Path:
    return Path(out) / "selections" / strategy / f"seed{seed}.json"


def _features(ctx: _Context, spec: FeatureSpec) -> tuple[DesignBlocks, DesignBlocks | None]:
    """Pool and target design blocks in ``spec``'s space (cached in the run directory)."""
    X, _, X_target = design_features(ctx.pool, spec, target=ctx.target, cache_dir=Path(ctx.config.out) / "cache")
    return X, X_target


def _describe(spec: FeatureSpec, n: int) -> str:
    return f"{spec.kind} features of {n} pool configurations" + (" with force rows" if spec.forces else "")


def run_chain(ctx: _Context, strategy: StrategySpec, seed: int, *, log: Log | None = None) -> list[dict]:
    """Sequential mode: the budgets of one (strategy, seed) as rounds; returns its cell records."""
    from loops.models import make_model

    config = ctx.config
    out = Path(config.out)
    cand = candidates(eligible(ctx.pool), seed, config.pool_fraction)
    X = X_target = None
    spec = config.feature_spec(strategy)
    if spec is not None:
        X, X_target = _features(ctx, spec)
    label, name = strategy.label, strategy.name
    path = _selection_path(out, label, seed)
    state = read_json(path, {"selected": []})
    selected: list[int] = [int(i) for i in state["selected"]]
    selection_model_name = MODEL_STRATEGIES.get(name) or ("mace" if strategy.space == "mace" else None)
    records, model, model_budget = [], None, None
    labels: dict[int, Atoms | None] = {}

    def labelled_frames(idx):
        missing = [i for i in idx if i not in labels]
        if missing:
            labels.update(ctx.oracle.label(missing))
        return [i for i in idx if labels[i] is not None]

    for r, budget in enumerate(ctx.budgets):
        if len(selected) < budget:
            need = budget - len(selected)
            remaining = np.setdiff1d(cand, selected)
            ok = labelled_frames(selected) if selected else []
            if not selected and (selection_model_name is not None):
                # the first design cannot use a model: random, as in the active-learning loop
                picks = [int(i) for i in cand[np.random.default_rng(seed).permutation(len(cand))[:need]]]
            elif selection_model_name is not None:
                prev = ctx.budgets[r - 1]
                if model is None or model_budget != prev:
                    model = _selection_model(ctx, selection_model_name, seed, prev, ok, labels, log)
                    model_budget = prev
                if name in MODEL_STRATEGIES:
                    picks = select_by_variance(model, ctx.pool, remaining, need)
                else:
                    Xm = mace_features(model, ctx.pool)
                    picks = select(name, need, Xm, remaining, labelled=ok, seed=seed + r, reg=config.reg)
            else:
                y = per_atom_energies([labels[i] for i in ok], ctx.e0s) if ok and _accepts(name, "y_train") else None
                picks = select(name, need, X, remaining, labelled=ok, seed=seed + r, reg=config.reg,
                               X_target=X_target, y_train=y)
            selected += picks
            atomic_write_text(path, json.dumps({"selected": selected}))
        picked = selected[:budget]
        done = read_cell(out, label, seed, budget, picked)
        if done is not None:
            records.append(done)
            continue
        ok = labelled_frames(picked)
        if not ok:
            raise InputError(f"{label}, seed {seed}, k={budget}: every label failed; nothing to fit")
        task = CellTask(label, seed, budget, tuple(picked), len(picked) - len(ok), tuple(labels[i] for i in ok),
                        config.model, config.settings(), ctx.e0s, ctx.tests, config.test_limit, str(out),
                        config.keep_models)
        if selection_model_name == config.model:
            # the trained model also drives the next round's selection: keep it (and its files)
            model = make_model(config.model, config.settings(), seed=seed)
            model.fit(list(task.train), e0s=ctx.e0s, workdir=out / "models" / label / f"seed{seed}" / f"k{budget}")
            model_budget = budget
            records.append(run_cell(task, fitted=model))
        else:
            records.append(run_cell(task))
        if log:
            log(f"{label}, seed {seed}, k={budget}: " + _headline(records[-1]))
    return records


def _headline(record: dict) -> str:
    parts = []
    for name, m in record["errors"].items():
        if "force_mae" in m:
            parts.append(f"{name} F-MAE {m['force_mae']:.1f} meV/Å")
        elif "energy_mae" in m:
            parts.append(f"{name} E-MAE {m['energy_mae']:.2f} meV/atom")
    return "; ".join(parts)


def _selection_model(ctx: _Context, name: str, seed: int, budget: int, ok: Sequence[int], labels, log):
    """Fit the model that drives selection on the labels of the previous round."""
    from loops.models import make_model

    config = ctx.config
    settings = config.settings() if name == config.model else None
    model = make_model(name, settings, seed=seed)
    workdir = Path(config.out) / "models" / "selection" / name / f"seed{seed}" / f"k{budget}"
    model.fit([labels[i] for i in ok], e0s=ctx.e0s, workdir=workdir)
    return model


def _run_chain_in_worker(ctx: _Context, strategy: StrategySpec, seed: int, threads: int) -> list[dict]:
    _limit_threads(threads)
    return run_chain(ctx, strategy, seed)


def run_compare(config: CompareConfig, *, log: Log = print, progress: bool = True, client=None) -> list[dict]:
    """Run (or resume) a comparison; returns the tidy rows also written to ``results.csv``.

    Parameters
    ----------
    config : CompareConfig
    log : callable
        Receives one line per step.
    progress : bool
        Progress bars.
    client : dask.distributed.Client, optional
        Run cells (and live labels) on a Dask cluster instead of local processes.

    Returns
    -------
    list of dict
        One row per (strategy, seed, budget, test_set, metric) with ``value``: energy errors in
        meV/atom, force errors in meV/Å.

    Raises
    ------
    InputError, PoolError, UnknownElementError
        Bad settings or files, found before any label is used.
    RunMismatchError
        ``config.out`` holds a comparison with other settings.
    """
    from loops.report import plot_learning_curves, render_summary, write_results

    config.validate()
    frames = read_structures(config.pool, what="pool")
    budgets = tuple(sorted(int(b) for b in config.budgets))
    n_cand = len(candidates(eligible(frames), 0, config.pool_fraction))
    if budgets[-1] > n_cand:
        raise InputError(f"largest budget {budgets[-1]} exceeds the {n_cand} candidates per seed "
                         f"({config.pool_fraction:g} of a pool of {len(frames)})")
    species = sorted({s for a in frames for s in a.get_chemical_symbols()})
    tests = {Path(p).stem: str(Path(p).resolve()) for p in config.tests}
    for name, path in tests.items():
        extra = sorted({s for a in load_test(path, config.test_limit) for s in a.get_chemical_symbols()} - set(species))
        if extra:
            raise UnknownElementError(f"test set {name} contains {', '.join(extra)}, absent from the pool: "
                                      "a model fitted on the pool cannot predict it")
    target_frames = read_structures(config.target, what="target set") if config.target else []
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, what="comparison", fingerprint=config.fingerprint(pool_hash(frames), pool_hash(target_frames) if target_frames else None))

    oracle = make_oracle(config.oracle, frames, out, workers=config.workers, client=client, progress=progress)
    e0s = resolve_e0s(config, frames, species, oracle)
    n_cpu = os.cpu_count() or 1
    ctx = _Context(config=config, pool=oracle.pool, oracle=oracle, e0s=e0s, tests=tests, budgets=budgets,
                   target=tuple(bare(a, i) for i, a in enumerate(target_frames)))
    t0 = time.perf_counter()
    if config.mode == "oneshot":
        _run_oneshot(ctx, log=log, progress=progress, client=client, n_cpu=n_cpu)
    else:
        _run_sequential(ctx, log=log, progress=progress, client=client, n_cpu=n_cpu)

    rows = collect_rows(out, config.strategies, config.seeds, budgets)
    write_results(out / "results.csv", rows)
    header = (f"Pool `{Path(config.pool).name}` ({len(frames)} configurations, {config.pool_fraction:g} per seed), "
              f"model **{config.model}**, mode **{config.mode}**, oracle `{config.oracle}`; strategies without "
              f"`@space` select in **{config.select_with}** space ({config.features} rows).")
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv", header=header))
    plot_learning_curves(rows, out, title_prefix=f"{config.model}, {config.mode}: ")
    log(f"comparison finished in {time.perf_counter() - t0:.0f} s: {out / 'summary.md'}")
    return rows


def _run_oneshot(ctx: _Context, *, log: Log, progress: bool, client, n_cpu: int) -> None:
    config, out = ctx.config, Path(ctx.config.out)
    kmax = ctx.budgets[-1]
    features: dict[FeatureSpec, tuple] = {}
    pending: list[tuple[str, int, int, list[int]]] = []
    for strategy in config.specs():
        spec = config.feature_spec(strategy)
        for seed in config.seeds:
            path = _selection_path(out, strategy.label, seed)
            picks = read_json(path, {"selected": []})["selected"]
            if len(picks) < kmax:
                if spec not in features:
                    log(_describe(spec, len(ctx.pool)))
                    features[spec] = _features(ctx, spec)
                X, X_target = features[spec]
                cand = candidates(eligible(ctx.pool), seed, config.pool_fraction)
                t0 = time.perf_counter()
                picks = select(strategy.name, kmax, X, cand, seed=seed, reg=config.reg, X_target=X_target)
                atomic_write_text(path, json.dumps({"selected": picks}))
                log(f"{strategy.label}, seed {seed}: ranked {len(cand)} candidates in {time.perf_counter() - t0:.1f} s")
            for budget in ctx.budgets:
                if read_cell(out, strategy.label, seed, budget, picks[:budget]) is None:
                    pending.append((strategy.label, seed, budget, picks[:budget]))
    if not pending:
        log("every cell is finished: nothing to do")
        return
    needed = sorted({i for *_, idx in pending for i in idx})
    if isinstance(ctx.oracle, LiveOracle):
        log(f"labelling up to {len(needed)} picked configurations with {ctx.oracle.name}")
    labels = ctx.oracle.label(needed)
    tasks = []
    for strategy, seed, budget, idx in pending:
        ok = [i for i in idx if labels[i] is not None]
        if not ok:
            raise InputError(f"{strategy}, seed {seed}, k={budget}: every label failed; nothing to fit")
        tasks.append(CellTask(strategy, seed, budget, tuple(idx), len(idx) - len(ok), tuple(labels[i] for i in ok),
                              config.model, config.settings(), ctx.e0s, ctx.tests, config.test_limit, str(out),
                              config.keep_models))
    # Largest fits first: the pool stays busy until the end.
    tasks.sort(key=lambda t: -t.budget)
    n_all = len(config.strategies) * config.n_seeds * len(ctx.budgets)
    log(f"{len(tasks)} of {n_all} cells to fit and score ({len(config.strategies)} strategies × "
        f"{config.n_seeds} seeds × {len(ctx.budgets)} budgets)")
    _dispatch(_run_cell_in_worker, [(t,) for t in tasks], config.workers, client, n_cpu, progress, "cells")


def _run_sequential(ctx: _Context, *, log: Log, progress: bool, client, n_cpu: int) -> None:
    config = ctx.config
    chains = [(s, seed) for s in config.specs() for seed in config.seeds]
    for spec in dict.fromkeys(config.feature_spec(s) for s in config.specs()):
        if spec is not None:  # computed once here; the chains read the cache
            log(_describe(spec, len(ctx.pool)))
            _features(ctx, spec)
    if isinstance(ctx.oracle, LiveOracle):
        # live labels are claimed and committed in this process: chains run one after another,
        # the labelling inside each round is what runs in parallel
        for strategy, seed in chains:
            run_chain(ctx, strategy, seed, log=log)
        return
    _dispatch(_run_chain_in_worker, [(ctx, s, seed) for s, seed in chains], config.workers, client, n_cpu,
              progress, "chains")


def _dispatch(fn, arg_list: list[tuple], workers, client, n_cpu: int, progress: bool, what: str) -> None:
    """Run ``fn(*args, threads)`` for every args tuple on processes or Dask, with a progress bar.

    Local: ``workers`` spawned processes (default one per core), each given its share of the
    cores as ``threads``. Dask: one thread per task (a worker runs as many tasks as it has threads).
    """
    from loops.labelers import _progress_bar

    if not arg_list:
        return
    if client is not None:
        from distributed import as_completed

        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        threads = 1
        futures = [client.submit(fn, *(*args, threads), pure=False) for args in arg_list]
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"{what} on {n_workers} Dask workers", total=len(futures))
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.advance(task)
            finally:
                client.cancel(futures)
        return
    workers = min(len(arg_list), workers or n_cpu)
    threads = max(1, n_cpu // workers)
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"{what} on {workers} processes", total=len(arg_list))
        if workers == 1:
            for args in arg_list:
                fn(*(*args, threads))
                bar.advance(task)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: forking a process that has started OpenMP/BLAS threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = [ex.submit(fn, *(*args, threads)) for args in arg_list]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.advance(task)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def collect_rows(out: Path, strategies: Sequence[str], seeds: Sequence[int], budgets: Sequence[int]) -> list[dict]:
    """Tidy rows of every finished cell of the asked-for strategies, seeds and budgets."""
    rows = []
    for strategy in strategies:
        for seed in seeds:
            for budget in budgets:
                record = read_cell(Path(out), strategy, seed, budget)
                if record is None:
                    continue
                for test_set, metrics in record["errors"].items():
                    for metric in ("energy_mae", "energy_rmse", "force_mae", "force_rmse"):
                        if metric in metrics:
                            rows.append({"strategy": strategy, "seed": seed, "budget": budget,
                                         "test_set": test_set, "metric": metric, "value": float(metrics[metric])})
    return rows


__all__ = [
    "CompareConfig",
    "LiveOracle",
    "ReplayOracle",
    "candidates",
    "collect_rows",
    "make_oracle",
    "parse_oracle",
    "run_compare",
    "select",
]
