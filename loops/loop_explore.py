"""The exploring loop: ``oed loop run --explore md`` — label seeds, then explore, pick, label, fit.

Round 0 labels the seed geometries (``--init-from``; or an initial design of ``n_init`` from the
pool). Every later round runs MD with the model of the round before (:mod:`loops.explore`),
keeps the frames between the trust levels as candidates (with the pool's unpicked
configurations, when a pool is given) and picks at most ``batch_size`` of them with the
strategy, conditioned on the labelled set, so a batch is diverse rather than neighbouring
frames of one trajectory. The run directory is that of :mod:`loops.loop`, plus

- ``explore/round<r>.xyz``, ``explore/round<r>.json``  candidates and the exploration record
- ``stability/k<n>.json``  MD stability of the model trained on n labels (when asked)
- ``phases.jsonl``         every phase of every round, as it starts and ends
- ``stop.json``            why the run stopped: rounds, budget, converged or no candidates
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from loops.campaign import Campaign, ModelRef
from loops.explore import ExploreSource, md_stability
from loops.oracles import LabelBook, ReplayOracle, bare, resolve_e0s
from loops.parallel import Executor
from loops.rundir import check_settings
from loops.strategies import Features, RoundContext, SelectorStrategy
from oed.io import atomic_write_text, pool_hash, write_structures

__all__ = ["run_exploring"]


def run_exploring(config, out: Path, frames, n_seeds: int, allowed, species, oracle, tests, log, progress,
                  client=None) -> list[dict]:
    """Run (or resume) an exploring loop (called by :func:`loops.loop.run_loop`, which checks inputs).

    Returns the per-round results as :func:`loops.loop.run_loop`, each with ``exploration``
    (frames, candidates, trajectories stopped by reason, converged) and, when measured,
    ``md_stability``.
    """
    from loops.cells import load_test
    from loops.plots import plot_learning_curve

    pool = [bare(a, i) for i, a in enumerate(frames)]
    replay = isinstance(oracle, ReplayOracle)
    e0s = resolve_e0s(oracle, species, e0s_file=config.e0s_file, cache=out / "e0s.json", log=log)
    check_settings(out, config.fingerprint(pool_hash(frames)))
    book = LabelBook.for_run(oracle, out, pool, config.db)
    features = Features(pool, cache_dir=out / "cache", progress=progress)
    executor = Executor(workers=config.workers, client=client, progress=progress)
    source = ExploreSource(out, config.exploration, book, features, executor=executor, log=log)
    strategy = SelectorStrategy(config.strategy, config.strategy, config.features, reg=config.reg)
    campaign = Campaign(
        out=out, label=config.strategy, seed=config.seed, allowed=np.asarray(allowed, dtype=int),
        strategy=strategy, book=book, model=ModelRef(config.model, config.settings(), committee=config.committee), e0s=e0s, tests=tests,
        schedule=(1,), features=features, test_limit=config.test_limit, keep_models=True,
        refinements=tuple(config.refinements), log=log)
    if n_seeds:
        first = list(range(n_seeds))
    else:
        init = config.init_strategy or config.strategy
        ctx = RoundContext(pool=pool, labels={}, e0s=e0s, seed=config.seed, features=features)
        first = campaign.selected()[:config.n_init] or \
            SelectorStrategy(init, init, config.features, reg=config.reg).select(config.n_init, allowed, [], ctx)

    stability = None
    if config.md_stability_steps:
        first_test = load_test(next(iter(tests.values())), None)
        starts = [first_test[i] for i in np.linspace(0, len(first_test) - 1, min(4, len(first_test))).astype(int)]

        def stability(model):
            return md_stability(model, starts, temperature=300.0, steps=config.md_stability_steps,
                                timestep_fs=config.exploration.timestep_fs, seed=config.seed,
                                limits=config.exploration.limits, executor=executor)

    def write_outputs(records: list[dict], stop: dict) -> list[dict]:
        rounds = campaign.rounds()
        results = []
        for r, rec in enumerate(records):
            row = {"round": r, "n_labelled": rec["n_labelled"], "n_failed": rec["n_failed"],
                   "n_picked": rounds[r] if r < len(rounds) else 0,
                   "strategy": "seeds" if (r == 0 and n_seeds) else config.strategy,
                   "fit_seconds": rec["fit_seconds"], "errors": rec["errors"]}
            for key in ("exploration", "md_stability", "refined"):
                if key in rec:
                    row[key] = rec[key]
            results.append(row)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        write_structures(out / "labelled.xyz", book.labelled() if not replay else
                         [a for a in book.labels(campaign.selected()).values() if a is not None])
        if results:
            plot_learning_curve(results, out / "learning_curve.png",
                                title=f"{config.strategy}, exploring MD, {oracle.name}")
        return results

    records, stop = campaign.explore_run(source, n_rounds=config.n_rounds, batch=config.batch_size, first=first,
                                         seeds=list(range(n_seeds)), max_labels=config.max_labels,
                                         stability=stability, on_record=write_outputs)
    return write_outputs(records, stop)


def read_stop(out: Path) -> dict | None:
    """Why an exploring run stopped (``stop.json``), or None while it runs."""
    path = Path(out) / "stop.json"
    return json.loads(path.read_text()) if path.exists() else None
