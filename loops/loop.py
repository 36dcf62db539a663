"""The active-learning loop: one campaign of select → label → fit → score rounds.

Round 0 labels an initial design of ``n_init`` configurations; each of the ``n_rounds``
rounds after it picks ``batch_size`` more with the strategy conditioned on everything labelled
so far (:class:`loops.campaign.Campaign`). Labels come from any oracle (PySCF by default, xTB,
any ASE calculator, or the pool's own labels replayed). All state lives in the run directory,
so running the same command again resumes, and adding rounds extends:

- ``config.json``   the settings that fix the picks; a rerun with others is refused
- ``selections/<strategy>/seed<s>.json``   the picks, written *before* labelling starts (claim)
- ``labels.db``     ase.db (SQLite), one committed row per label or failure; with ``db``
  (a PostgreSQL URL) the rows go to that server instead and ``store.json`` names it
- ``cheap_labels.db``  cheap-oracle labels (GFN2-xTB) of strategies that read one (``lfab``, ``ggfps``):
  apart from ``labels.db``, never trained on; ``selections/<strategy>/seed<s>.cheap.json`` their record.
  The strategy labels what it reads, in this process, in the round that first reads it (one
  process: ~10 ms per ethanol, ~10 s for 1000 candidates), and never again on a resume; ``oed
  compare`` labels all candidates up front instead, because its campaigns may run in workers
- ``e0s.json``      isolated-atom energies (eV) used as E0s
- ``cells/<strategy>/seed<s>/k<n>.json``   each round's training picks and errors
- ``models/<strategy>/seed<s>/k<n>/``      each round's potential (``gap.xml`` for a GAP)
- ``results.json``  errors per round and test file (meV/atom, meV/Å)
- ``labelled.xyz``  every label as extended XYZ (REF_energy, REF_forces)
- ``learning_curve.png``
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loops.campaign import Campaign, ModelRef, test_sets
from loops.explore import ExploreSettings
from loops.gap import GAPSettings
from loops.models import model_class
from loops.oracles import LabelBook, ReplayOracle, bare, make_oracle, parse_oracle, resolve_e0s
from loops.parallel import Executor
from loops.rundir import check_run_dir, check_settings, run_lock
from loops.settings import fingerprint_fields
from loops.store import check_db_url
from loops.strategies import (
    Features,
    RandomStrategy,
    StrategySpec,
    eligible,
    make_strategy,
    parse_strategy,
    strategy_feature_spec,
)
from oed.design import DEFAULT_REG, FeatureSpec
from oed.errors import InputError
from oed.io import atomic_write_text, pool_hash, read_structures, write_structures
from oed.selectors import selector_class

Log = Callable[[str], None]


@dataclass(frozen=True)
class LoopConfig:
    """Settings of one active-learning run (the CLI builds this and calls :func:`run_loop`).

    Parameters
    ----------
    pool : Path or None
        Candidate configurations (extxyz); their labels, if any, are ignored. Optional with
        ``explore`` and ``init_from``.
    tests : tuple of Path
        Test sets (extxyz with reference energy and/or forces).
    out : Path
        Run directory.
    n_init, batch_size, n_rounds : int
        Initial design size, picks per round, rounds after the initial one.
    strategy : str
        Strategy of the rounds, written as in ``oed compare`` (:func:`loops.strategies.parse_strategy`):
        a selector (``oed.selectors.available()``) in the run's feature space (``features``), or
        ``name@space`` in a space of its own (``lcmd@gap-gp+forces``); the model-driven
        ``gap-variance`` and ``lfab``/``lfab-top``/``lfab-energy``; ``ggfps`` (force norms from
        the cheap oracle). ``lfab`` and ``ggfps`` cheap-label candidates with GFN2-xTB into
        ``cheap_labels.db`` as they select (:mod:`loops.lfab`). With ``explore``: a selector name only.
    init_strategy : str or None
        Label-free strategy of the initial design; default: ``strategy``, or ``random`` when
        ``strategy`` needs a fitted model (no model exists before round 0).
    method : str
        Level of theory, ``xc/basis``, of the default oracle (PySCF).
    oracle : str or None
        Where labels come from (:func:`loops.oracles.parse_oracle`): ``"pyscf:xc/basis"``,
        ``"xtb:gfn2-xtb"``, ``"ase:MODULE:CLASS[:JSON]"``, or ``"pool"`` (replay the pool's own
        labels). Default: ``"pyscf:<method>"``.
    seed : int
        Random seed (round r uses ``seed + r``).
    workers : int or None
        Labelling processes; default: one per core.
    e0s_file : Path or None
        Isolated-atom energies (extxyz of single atoms); default: computed
        with the same labeller.
    test_limit : int or None
        Evaluate on at most this many configurations per test file, evenly
        spaced through the file (for quick demos).
    reg : float
        Prior precision of the information matrix (rows scaled by the expected errors).
    features : FeatureSpec
        Feature map and information rows the selector works on.
    gap : GAPSettings
        Settings of the GAP (``model="gap"``; its ``rnd_seed`` is kept).
    model : str
        Model trained each round (``loops.models.available()``).
    model_settings : dataclass or None
        Settings of another model than the GAP (``None``: its defaults).
    keep_models : bool
        Keep every round's model files (default: yes, a loop's models are its product).
    init_from : Path or None
        Seed geometries (extxyz), labelled in round 0 (instead of an initial design of
        ``n_init`` from the pool).
    explore : str or None
        ``"md"``: each round after the first explores with the current model
        (:mod:`loops.explore`) and picks from what it found (plus the pool, if given).
    exploration : ExploreSettings
        Temperatures, steps, uncertainty and trust levels of the exploration.
    max_labels : int or None
        Stop once this many configurations are labelled (exploring runs).
    committee : int
        Train a committee of this many models (different seeds and subsamples) each round:
        its mean predicts, its force deviation is the ``committee`` uncertainty (0: one model).
    md_stability_steps : int
        With ``explore``: after each round, this many steps of 300 K MD from test geometries
        measure the model's MD stability (0: not measured).
    refinements : tuple of str
        Test-time refinements each round's model is also scored with (``"radius"``, ``"ttt"``;
        :mod:`loops.refine`): ``results.json`` gains ``refined`` errors per round.
    db : str, optional
        A database server URL (``postgresql://user@host:port/dbname``) for the labels instead
        of ``out/labels.db``; the password comes from ``PGPASSWORD`` or ``~/.pgpass``
        (:mod:`loops.store`). Not part of the fingerprint: a resumed run must name the same store.
    """

    pool: Path | None
    tests: tuple[Path, ...]
    out: Path
    n_init: int
    batch_size: int
    n_rounds: int
    strategy: str = "d-optimal"
    init_strategy: str | None = None
    method: str = "pbe/def2-svp"
    seed: int = 0
    workers: int | None = None
    e0s_file: Path | None = None
    test_limit: int | None = None
    reg: float = DEFAULT_REG
    features: FeatureSpec = field(default_factory=FeatureSpec)
    gap: GAPSettings = field(default_factory=GAPSettings)
    oracle: str | None = None
    model: str = "gap"
    model_settings: Any = None
    keep_models: bool = True
    init_from: Path | None = None
    explore: str | None = None
    exploration: ExploreSettings = field(default_factory=ExploreSettings)
    max_labels: int | None = None
    md_stability_steps: int = 0
    committee: int = 0
    refinements: tuple[str, ...] = ()
    db: str | None = None

    def validate(self) -> None:
        """Check the settings before any work.

        Raises
        ------
        InputError
            Non-positive sizes, an unknown strategy, a model-driven initial strategy, no test
            file, or two test files with the same name.
        """
        for name in ("n_init", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool is None and (self.init_from is None or self.explore is None):
            raise InputError("give a pool (--pool), or seed geometries to explore from (--init-from with --explore md)")
        if self.explore not in (None, "md"):
            raise InputError(f"unknown exploration {self.explore!r}; the one there is: md")
        if self.init_from is not None and self.explore is None:
            raise InputError("--init-from seeds an exploring run: add --explore md")
        if self.explore is not None:
            self.exploration.validate()
        if self.max_labels is not None and self.max_labels < 1:
            raise InputError(f"max_labels must be >= 1, got {self.max_labels}")
        if self.committee == 1 or self.committee < 0:
            raise InputError(f"a committee needs at least 2 models, got --committee {self.committee}")
        if self.explore is not None and self.exploration.uncertainty == "committee" and self.committee < 2:
            raise InputError("uncertainty committee needs --committee K (K >= 2 models)")
        if self.md_stability_steps < 0:
            raise InputError(f"md_stability_steps must be >= 0, got {self.md_stability_steps}")
        if self.n_rounds < 0:
            raise InputError(f"n_rounds must be >= 0, got {self.n_rounds}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.test_limit is not None and self.test_limit < 1:
            raise InputError(f"test_limit must be >= 1, got {self.test_limit}")
        if self.explore is not None:
            # the exploring loop (loops.loop_explore) builds selector strategies only
            selector_class(self.strategy)
            selector_class(self.init_strategy or self.strategy)
        else:
            self.spec()
            init = self.init_spec()
            if init.model is not None:
                raise InputError(f"initial strategy {init.label!r} needs a model fitted on labels, and round 0 has "
                                 "none: give a label-free --init-strategy (default: random for a model-driven "
                                 "--strategy)")
        if not self.tests:
            raise InputError("give at least one test file")
        names = [test_name(p) for p in self.tests]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"test files must have distinct names, repeated: {', '.join(dup)}")
        parse_oracle(self.oracle_spec)
        model_class(self.model)
        from loops.refine import check_refinements

        check_refinements(self.model, tuple(self.refinements))
        if self.refinements and self.committee:
            raise InputError("test-time refinements score one model: drop --committee, or --ttt/--radius-refinement")
        self.settings().validate()
        self.features.validate()
        check_db_url(self.db)

    def fingerprint(self, pool_digest: str) -> dict:
        """The settings that fix picks and labels: a resumed run must match them."""
        return {
            "pool": pool_digest,
            "tests": sorted(test_name(p) for p in self.tests),
            "n_init": self.n_init,
            "batch_size": self.batch_size,
            "strategy": self.strategy,
            "init_strategy": self.initial_strategy,
            "oracle": self.oracle_spec,
            "seed": self.seed,
            "test_limit": self.test_limit,
            "reg": self.reg,
            "features": asdict(self.features),
            "model": self.model,
            "model_settings": fingerprint_fields(self.settings()),
            **({} if self.explore is None else {"explore": self.explore, "exploration": self.exploration.fingerprint(),
                                                 "max_labels": self.max_labels,
                                                 "md_stability_steps": self.md_stability_steps}),
            **({"committee": self.committee} if self.committee else {}),
            **({"refinements": sorted(self.refinements)} if self.refinements else {}),
        }

    @property
    def initial_strategy(self) -> str:
        """Strategy of round 0: ``init_strategy``, else ``strategy``, else ``random`` when
        ``strategy`` needs a model (as ``oed compare`` starts its model-driven campaigns)."""
        if self.init_strategy is not None:
            return self.init_strategy
        if self.explore is None and self.spec().model is not None:
            return "random"
        return self.strategy

    def spec(self) -> StrategySpec:
        """``strategy`` parsed; without ``@space`` it selects in ``features``' space and rows."""
        return self._parse(self.strategy)

    def init_spec(self) -> StrategySpec:
        """:attr:`initial_strategy` parsed."""
        return self._parse(self.initial_strategy)

    def _parse(self, text: str) -> StrategySpec:
        return parse_strategy(text, select_with=self.features.kind,
                              features="forces" if self.features.forces else "energy")

    def feature_spec(self, spec: StrategySpec) -> FeatureSpec | None:
        """Feature map of a parsed strategy (``None``: made per round from the model).

        A selector written without ``@space`` works on ``features`` exactly, as loops always
        have (so a resumed run picks as before); ``name@space`` and ``lfab`` resolve their space
        as ``oed compare`` does (:func:`loops.strategies.strategy_feature_spec`: ``gap-kernel``
        and ``gap-gp`` from this run's GAP settings).
        """
        if "@" not in spec.label and spec.model is None:
            return self.features
        return strategy_feature_spec(spec, self.model, self.settings())

    @property
    def oracle_spec(self) -> str:
        """The oracle string in use (``pyscf:<method>`` unless ``oracle`` is given)."""
        return self.oracle if self.oracle is not None else f"pyscf:{self.method}"

    def settings(self):
        """Settings of the model trained each round."""
        if self.model_settings is not None:
            return self.model_settings
        return self.gap if self.model == "gap" else model_class(self.model).settings_class()

    def schedule(self) -> tuple[int, ...]:
        """Cumulative labels after each round: n_init, n_init + batch, …"""
        return tuple(self.n_init + r * self.batch_size for r in range(self.n_rounds + 1))


def test_name(path: Path) -> str:
    """Name of a test set in results: its file name without extension."""
    return Path(path).stem


def run_loop(config: LoopConfig, *, log: Log = print, progress: bool = True, client=None) -> list[dict]:
    """Run (or resume) an active-learning loop; returns the per-round results.

    Parameters
    ----------
    config : LoopConfig
    log : callable
        Receives one line per step.
    progress : bool
        Progress bars for labelling.
    client : dask.distributed.Client, optional
        Label on a Dask cluster instead of local processes.

    Returns
    -------
    list of dict
        One entry per finished round: ``round``, ``n_labelled``, ``n_failed``, ``n_picked``,
        ``strategy``, ``fit_seconds`` and ``errors`` = {test name: metrics} with
        ``energy_mae``/``energy_rmse`` (meV/atom) and ``force_mae``/``force_rmse`` (meV/Å)
        where the test file has those labels (and per ``config_type`` where a file has several).

    Raises
    ------
    InputError, PoolError, UnknownElementError
        Bad settings or files, found before any label is made.
    RunMismatchError
        ``config.out`` holds a run with other settings.
    """
    config.validate()
    out = check_run_dir(Path(config.out))
    seeds = [] if config.init_from is None else read_structures(config.init_from, what="seed geometries")
    pool_frames = [] if config.pool is None else read_structures(config.pool, what="pool")
    frames = list(seeds) + list(pool_frames)
    allowed = eligible(frames, log=log)
    allowed = allowed[allowed >= len(seeds)]  # the seeds are round 0, not candidates
    if config.init_from is None and config.n_init > len(allowed):
        raise InputError(f"n_init={config.n_init} exceeds the {len(allowed)} candidates of the pool")
    species = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    oracle = make_oracle(config.oracle_spec, pool=frames,
                         executor=Executor(workers=config.workers, client=client, progress=progress))
    tests = test_sets(config.tests, config.test_limit, species,
                      level_of_theory=getattr(oracle, "level_of_theory", oracle.name), log=log)
    if hasattr(oracle, "check"):
        oracle.check(frames)  # set-up errors (an element the basis lacks) before anything is written
    with run_lock(out):
        if config.explore is not None:
            from loops.loop_explore import run_exploring

            return run_exploring(config, out, frames, len(seeds), allowed, species, oracle, tests, log,
                                 progress, client)
        return _run(config, out, frames, allowed, species, oracle, tests, log, progress)


def _run(config, out, frames, allowed, species, oracle, tests, log, progress) -> list[dict]:
    pool = [bare(a, i) for i, a in enumerate(frames)]
    replay = isinstance(oracle, ReplayOracle)
    e0s = resolve_e0s(oracle, species, e0s_file=config.e0s_file, cache=out / "e0s.json", log=log)
    # the settings are recorded only once everything that can fail before the run has passed
    check_settings(out, config.fingerprint(pool_hash(frames)))
    book = LabelBook.for_run(oracle, out, pool, config.db)

    features = Features(pool, cache_dir=out / "cache", progress=progress)
    spec, init_spec = config.spec(), config.init_spec()
    init = init_spec.label
    strategy = make_strategy(spec, config.feature_spec(spec), reg=config.reg, run_dir=out, seed=config.seed)
    # round 0 of a model-driven strategy picks at random, as in oed compare; a label-free one as written
    first = RandomStrategy() if (config.init_strategy is None and spec.model is not None) else \
        make_strategy(init_spec, config.feature_spec(init_spec), reg=config.reg, run_dir=out, seed=config.seed)
    used = (spec,) if isinstance(first, RandomStrategy) else (init_spec, spec)
    for fspec in dict.fromkeys(config.feature_spec(s) for s in used):
        if fspec is not None:  # computed once, before the first label
            log(f"{fspec.kind} features of {len(pool)} pool configurations"
                + (" with force rows" if fspec.forces else ""))
            features.get(fspec)
    campaign = Campaign(
        out=out, label=config.strategy, seed=config.seed, allowed=allowed, strategy=strategy, first=first,
        book=book, model=ModelRef(config.model, config.settings(), committee=config.committee), e0s=e0s, tests=tests,
        schedule=config.schedule(), features=features, test_limit=config.test_limit,
        keep_models=config.keep_models, refinements=tuple(config.refinements), log=log)
    from loops.plots import plot_learning_curve

    def _cheap_cost(r: int) -> dict:
        # cheap-oracle labels the selections up to round r read (cumulative; lfab, ggfps): what they cost
        costs = [s.cheap_cost(r) for s in (first, strategy) if hasattr(s, "cheap_cost")]
        if not costs:
            return {}
        cost = max(costs, key=lambda c: c.n_labels)
        return {"cheap_labels": cost.n_labels, "cheap_failed": cost.n_failed, "cheap_seconds": round(cost.seconds, 4)}

    def write_outputs(records: list[dict]) -> list[dict]:
        # after every round, so a long run shows its progress and a killed one keeps it
        rounds = campaign.rounds()
        results = [{
            "round": r,
            "n_labelled": rec["n_labelled"],
            "n_failed": rec["n_failed"],
            "n_picked": rounds[r] if r < len(rounds) else 0,
            "strategy": init if r == 0 else config.strategy,
            "fit_seconds": rec["fit_seconds"],
            "errors": rec["errors"],
            **({"refined": rec["refined"]} if "refined" in rec else {}),
            **_cheap_cost(r),
        } for r, rec in enumerate(records)]
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        write_structures(out / "labelled.xyz", book.labelled() if not replay else
                         [a for a in book.labels(campaign.selected()).values() if a is not None])
        plot_learning_curve(results, out / "learning_curve.png", title=f"{config.strategy}, {oracle.name}")
        return results

    return write_outputs(campaign.run(on_record=write_outputs))
