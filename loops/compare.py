"""Compare selection strategies on a labelled pool: strategies × seeds × budgets, ID and OOD.

The question a user asks is *which selection strategy buys the most accuracy per DFT label, in
distribution and out of it, for the model I will train?* :func:`run_compare` answers it with a
grid of *cells* — (strategy, seed, budget) — each one a model fitted on the configurations the
strategy picked and scored on every test file:

- **Oracle** (:mod:`loops.oracles`). ``"pool"`` replays the pool's own labels: a label is
  revealed only for a configuration that has been picked; selectors see bare geometries.
  ``"pyscf:xc/basis"``, ``"xtb:gfn2-xtb"`` or ``"ase:MODULE:CLASS[:JSON]"`` label picks live,
  each label committed to ``labels.db`` once and never recomputed. The shipped ethanol labels
  equal PySCF PBE/def2-SVP to 0.2 meV/Å (docs/design.md §6), so replay is a faithful, fast stand-in.
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

Each (strategy, seed) is one :class:`~loops.campaign.Campaign` whose rounds are the budgets;
its state (selections, labels, cells) lives in the run directory as :mod:`loops.campaign`
describes, so a rerun resumes and a finished cell is never redone. ``config.json`` holds the
settings that fix the cells (a rerun with others is refused); ``results.csv``, ``summary.md``
and ``learning_curve_<test set>.png`` are rebuilt from the cells.

Cells (one-shot) or campaigns (sequential, replayed labels) run in parallel on local processes,
or on a Dask cluster when a client is given (its workers must see the run directory: a
``LocalCluster`` or a shared file system).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loops.campaign import Campaign, ModelRef, test_sets
from loops.cells import collect_rows, run_cell_in_worker
from loops.oracles import LabelBook, ReplayOracle, bare, make_oracle, parse_oracle, resolve_e0s
from loops.parallel import Executor
from loops.rundir import check_run_dir, check_settings, run_lock
from loops.settings import fingerprint_fields
from loops.store import check_db_url
from loops.strategies import (
    Features,
    RandomStrategy,
    StrategySpec,
    candidates,
    eligible,
    make_strategy,
    parse_strategy,
    strategy_feature_spec,
)
from oed.design import DEFAULT_REG, FeatureSpec
from oed.errors import InputError
from oed.io import atomic_write_text, pool_hash, read_structures

Log = Callable[[str], None]

MODES = ("oneshot", "sequential")
SELECT_WITH = ("soap", "gap-kernel", "mace")


# -- configuration ---------------------------------------------------------------------------------
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
        ``"pool"``, ``"pyscf:xc/basis"``, ``"xtb:gfn2-xtb"`` or ``"ase:MODULE:CLASS[:JSON]"``.
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
    md_stability_steps : int
        Per cell, MD steps (0.5 fs, 300 K) from 4 test geometries to measure the time to the first
        physical failure (0: not measured); in ``md_stability.csv`` and ``summary.md``. Cells
        finished before it was asked keep no stability (remove them to measure it).
    refinements : tuple of str
        Test-time refinements each cell is also scored with (``"radius"``, ``"ttt"``;
        :mod:`loops.refine`); results.csv then has a ``refinement`` column and summary.md a
        table of the changes. ``ttt`` needs ``model="mace-ttt"``.
    dft_label_seconds : float
        Seconds one DFT label costs, to express cheap-oracle labels (``lfab``, ``ggfps``) in
        DFT-label equivalents when the oracle's own are not measured (a replayed pool); default
        8 s, PBE/def2-SVP of one ethanol on 2 cores (docs/design.md §6). A live oracle's mean
        label time from its store is used instead.
    db : str, optional
        A database server URL (``postgresql://user@host:port/dbname``) for a live oracle's labels
        instead of ``out/labels.db`` (:func:`loops.store.run_store`; the password comes from
        ``PGPASSWORD`` or ``~/.pgpass``). A resumed comparison must name the same one.
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
    md_stability_steps: int = 0
    refinements: tuple[str, ...] = ()
    dft_label_seconds: float = 8.0
    db: str | None = None

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
        from loops.refine import check_refinements

        check_refinements(self.model, tuple(self.refinements))
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "oneshot":
            driven = [s.label for s in specs if s.model]
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
        if not (isinstance(self.dft_label_seconds, (int, float)) and self.dft_label_seconds > 0):
            raise InputError(f"dft_label_seconds must be > 0, got {self.dft_label_seconds!r}")
        check_db_url(self.db)  # --db with the replay oracle: refused by LabelBook.for_run, before anything is written

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
        """Feature map of a strategy (``None``: MACE descriptors or GAP variance, made per round):
        :func:`loops.strategies.strategy_feature_spec` with this comparison's model and settings."""
        return strategy_feature_spec(strategy, self.model, self.settings())

    def fingerprint(self, pool_digest: str, target_digest: str | None) -> dict:
        """Settings that fix every cell; strategies, seeds and budgets may grow between runs."""
        return {
            "pool": pool_digest,
            "tests": sorted(Path(p).stem for p in self.tests),
            "model": self.model,
            "model_settings": fingerprint_fields(self.settings()),
            "select_with": self.select_with,
            "features": self.features,
            "mode": self.mode,
            "oracle": self.oracle,
            "pool_fraction": self.pool_fraction,
            "target": target_digest,
            "test_limit": self.test_limit,
            "reg": self.reg,
            # cells scored without a refinement would lack its rows: a change is refused, like the model's
            **({"refinements": sorted(self.refinements)} if self.refinements else {}),
        }




def _describe(spec: FeatureSpec, n: int) -> str:
    return f"{spec.kind} features of {n} pool configurations" + (" with force rows" if spec.forces else "")


def _campaign_in_worker(campaign: Campaign) -> list[dict]:
    return campaign.run()


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
    config.validate()
    out = check_run_dir(Path(config.out))
    frames = read_structures(config.pool, what="pool")
    budgets = tuple(sorted(int(b) for b in config.budgets))
    allowed = eligible(frames, log=log)
    n_cand = len(candidates(allowed, 0, config.pool_fraction))
    if budgets[-1] > n_cand:
        raise InputError(f"largest budget {budgets[-1]} exceeds the {n_cand} candidates per seed "
                         f"({config.pool_fraction:g} of a pool of {len(frames)})")
    species = sorted({s for a in frames for s in a.get_chemical_symbols()})
    target_frames = read_structures(config.target, what="target set") if config.target else []
    executor = Executor(workers=config.workers, client=client, progress=progress)
    oracle = make_oracle(config.oracle, pool=frames, executor=executor)
    tests = test_sets(config.tests, config.test_limit, species,
                      level_of_theory=getattr(oracle, "level_of_theory", oracle.name), log=log)
    if hasattr(oracle, "check"):
        oracle.check(frames)  # set-up errors (an element the basis lacks) before anything is written
    with run_lock(out):
        return _run(config, out, frames, allowed, budgets, species, target_frames, oracle, tests, executor,
                    log, progress)


def _run(config, out, frames, allowed, budgets, species, target_frames, oracle, tests, executor, log,
         progress) -> list[dict]:
    from loops.report import plot_learning_curves, render_summary, write_results

    live = not isinstance(oracle, ReplayOracle)
    pool = [bare(a, i) for i, a in enumerate(frames)]
    book = LabelBook.for_run(oracle, out, pool, config.db)  # refuses another store before any label
    e0s = resolve_e0s(oracle, species, e0s_file=config.e0s_file, cache=out / "e0s.json", log=log)
    # the settings are recorded only once everything that can fail before the run has passed
    check_settings(out, what="comparison", fingerprint=config.fingerprint(
        pool_hash(frames), pool_hash(target_frames) if target_frames else None))
    features = Features(pool, target=[bare(a, i) for i, a in enumerate(target_frames)], cache_dir=out / "cache",
                        progress=progress)
    campaigns = []
    for spec in config.specs():
        fspec = config.feature_spec(spec)
        for seed in config.seeds:
            campaigns.append(Campaign(
                out=out, label=spec.label, seed=seed, allowed=candidates(allowed, seed, config.pool_fraction),
                strategy=make_strategy(spec, fspec, reg=config.reg, run_dir=out, seed=seed), book=book,
                model=ModelRef(config.model, config.settings(), seed=seed), e0s=e0s, tests=tests,
                schedule=budgets, features=features, ahead=config.mode == "oneshot",
                first=RandomStrategy() if spec.model else None, test_limit=config.test_limit,
                keep_models=config.keep_models, md_stability_steps=config.md_stability_steps,
                refinements=tuple(config.refinements), log=log))
    for fspec in dict.fromkeys(config.feature_spec(s) for s in config.specs()):
        if fspec is not None:  # computed once here; campaigns (and workers, from the cache) reuse them
            log(_describe(fspec, len(pool)))
            features.get(fspec)
    _cheap_labels(campaigns, pool, out, config, progress, log)
    t0 = time.perf_counter()
    if config.mode == "oneshot":
        _run_oneshot(campaigns, book, config, executor, log)
    elif live:
        # live labels are claimed and committed in this process: campaigns run one after another,
        # the labelling inside each round is what runs in parallel
        for campaign in campaigns:
            campaign.run()
    else:
        for campaign in campaigns:
            campaign.log = _quiet_log
        executor.map(_campaign_in_worker, campaigns, description="campaigns")

    rows = collect_rows(out, config.strategies, config.seeds, budgets, tuple(config.refinements))
    write_results(out / "results.csv", rows)
    rows = [r for r in rows if r.get("refinement", "none") == "none"]  # tables and curves: the models as trained
    header = (f"Pool `{Path(config.pool).name}` ({len(frames)} configurations, {config.pool_fraction:g} per seed), "
              f"model **{config.model}**, mode **{config.mode}**, oracle `{config.oracle}`; strategies without "
              f"`@space` select in **{config.select_with}** space ({config.features} rows).")
    summary = render_summary(out / "results.csv", header=header)
    if config.md_stability_steps:
        summary += _stability_table(out, config, budgets)
    summary += _cost_table(out, campaigns, config, book.store)
    if config.refinements:
        from loops.refine import refinement_table
        from loops.report import read_results

        summary += refinement_table(read_results(out / "results.csv", refinement=None))
    atomic_write_text(out / "summary.md", summary)
    plot_learning_curves(rows, out, title_prefix=f"{config.model}, {config.mode}: ")
    log(f"comparison finished in {time.perf_counter() - t0:.0f} s: {out / 'summary.md'}")
    return rows


def _cheap_labels(campaigns: list[Campaign], pool, out: Path, config: CompareConfig, progress: bool, log: Log) -> None:
    """Cheap-label, here and once, every candidate of the strategies that read a cheap oracle.

    Those strategies (:mod:`loops.lfab`) would label what they miss themselves, but campaigns
    may run in worker processes that cannot start their own: so the union of their candidate
    sets is labelled in this process, in parallel, into ``cheap_labels.db``. Each campaign is
    charged the labels it reads (:func:`loops.cheap.account`), not who computed them.
    """
    from loops.cheap import CHEAP_DB, CheapLabels

    wanted: dict[str, set[int]] = {}
    for campaign in campaigns:
        if hasattr(campaign.strategy, "cheap_labels"):
            wanted.setdefault(campaign.strategy.cheap, set()).update(int(i) for i in campaign.allowed)
    for name, indices in wanted.items():
        store = CheapLabels(pool, out / CHEAP_DB, oracle=name,
                            executor=Executor(workers=config.workers, progress=progress))
        todo = store.pending(sorted(indices))
        if todo:
            t0 = time.perf_counter()
            store.ensure(todo)
            log(f"cheap labels ({store.name}) of {len(todo)} candidates in {time.perf_counter() - t0:.0f} s, "
                f"in {out / CHEAP_DB}, apart from the DFT labels")


def _cost_table(out: Path, campaigns: list[Campaign], config: CompareConfig, store) -> str:
    """Cheap-label cost of every finished cell: into the cell records, ``cheap_cost.csv`` and a summary table."""
    import pandas as pd

    from loops.cheap import account, cost_table, dft_label_seconds

    seconds, source = dft_label_seconds(store, default=config.dft_label_seconds)
    rows = account(out, campaigns, seconds)
    if not rows:
        return ""
    atomic_write_text(out / "cheap_cost.csv", pd.DataFrame(rows).to_csv(index=False))
    return cost_table(rows, seconds, source)


def _stability_table(out: Path, config: CompareConfig, budgets) -> str:
    """``md_stability.csv`` and a Markdown table: mean time to the first physical failure per strategy and budget."""
    import pandas as pd

    from loops.cells import stability_rows

    rows = stability_rows(out, config.strategies, config.seeds, budgets)
    if not rows:
        return ""
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "md_stability.csv", frame.to_csv(index=False))
    first = rows[0]
    lines = ["", f"## MD stability ({first['temperature_K']:g} K Langevin, {first['steps']} steps of 0.5 fs "
             "from 4 test geometries; time to the first physical failure, capped at the run length)", "",
             "| strategy | budget | mean time (fs) | trajectories surviving |", "|---|---|---|---|"]
    for (strategy, budget), g in frame.groupby(["strategy", "budget"], sort=False):
        lines.append(f"| {strategy} | {budget} | {g['mean_fs'].mean():.0f} | {int(g['survived'].sum())}/{int(g['n'].sum())} |")
    return "\n".join(lines) + "\n"


def _quiet_log(message: str) -> None:
    pass


def _run_oneshot(campaigns: list[Campaign], book: LabelBook, config: CompareConfig, executor: Executor,
                 log: Log) -> None:
    """Rank every campaign once (here), label what the cells need (one batch), fit the cells in parallel."""
    pending = []
    for campaign in campaigns:
        selected = campaign.plan()
        for r in range(len(campaign.schedule)):
            pending.append((campaign, r, selected))
    needed = sorted({i for c, r, sel in pending for i in sel[:c.schedule[r]]})
    todo = book.pending(needed)
    if todo:
        log(f"labelling up to {len(todo)} picked configurations with {book.oracle.name}")
        book.labels(todo)
    tasks = [t for t in (c.task(r, sel) for c, r, sel in pending) if t is not None]
    if not tasks:
        log("every cell is finished: nothing to do")
        return
    # Largest fits first: the workers stay busy until the end.
    tasks.sort(key=lambda t: -t.budget)
    n_all = len(config.strategies) * config.n_seeds * len(config.budgets)
    log(f"{len(tasks)} of {n_all} cells to fit and score ({len(config.strategies)} strategies × "
        f"{config.n_seeds} seeds × {len(config.budgets)} budgets)")
    executor.map(run_cell_in_worker, tasks, description="cells")


__all__ = ["CompareConfig", "parse_oracle", "parse_strategy", "run_compare"]
