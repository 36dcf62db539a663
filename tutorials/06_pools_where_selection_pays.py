#!/usr/bin/env python
"""Tutorial 6 — pools where selection can pay: heterogeneous (ethanol + methanol) and mixed-temperature (3BPA).

On the i.i.d. rMD17 ethanol pool, the pool where random is hardest to beat, tutorial 1 found
D-optimal and I-optimal on summed SOAP no better than random and k-means only a few per cent
better (docs/design.md §4; Ghosh, Todorović, Vehtari & Rinke, J. Chem. Phys. 162, 014103, 2025,
found the same for GP active learning on compact data sets). Selection should pay where a pool is
**heterogeneous** or **redundant**, or where the target differs from the pool. Two such pools,
with their published labels replayed as the oracle:

A. **ethanol + methanol** (``data/ethanol/train_eth_meth.xyz``: 1000 ethanol, 300 methanol,
   PBE/def2-SVP), scored per molecule on ``test_eth_meth.xyz`` (``test_eth_meth:ethanol``,
   ``test_eth_meth:methanol``). Random spends 77 % of its labels on ethanol.
B. **3BPA at mixed temperatures** (``data/3bpa/train_mixedT.xyz``: 500 configurations from MD at
   300, 600 and 1200 K, ωB97X/6-31G(d)), scored on 100 configurations of ``train_300K.xyz`` not in
   the pool (``test_300K``): the hot frames are redundant for a 300 K target. ``i-optimal`` here
   aims at a *target set* — 369 further 300 K geometries, label-free and disjoint from the test.

Strategies: random, FPS, CUR, k-means, D-optimal and I-optimal on summed SOAP, and D-optimal in
the GAP's own kernel features with force rows (on 3BPA, whose 27 atoms make a default fit take about
5 minutes on 2 cores, CUR and k-means are left out and the GAP keeps 400 sparse points per species,
``BPA_GAP``, instead of 1500). GAP (``loops.gap.GAPSettings()``), one-shot,
k = 25, 50, 100, 3 seeds sharing candidates (80 % of the pool each) — sized to finish in about
40 minutes on 2 cores; raise ``BUDGETS`` and ``N_SEEDS`` for tighter intervals.

Run::

    python tutorials/06_pools_where_selection_pays.py              # full run (about 40 min on 2 cores)
    python tutorials/06_pools_where_selection_pays.py --smoke --out /tmp/t6

Outputs in ``--out`` (default ``tutorials/outputs/06_pools_where_selection_pays/``): ``results.csv``
(``strategy`` is ``<pool>/<strategy>``), ``summary.md`` (rebuilt from results.csv alone by
:func:`render_summary`), ``learning_curves.png``; the comparisons run in ``OUT/work/`` and resume.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import DATA, ROOT, parse_args, run_comparisons  # noqa: E402

from loops.cells import subsample  # noqa: E402
from loops.compare import CompareConfig  # noqa: E402
from loops.gap import GAPSettings  # noqa: E402
from loops.report import (  # noqa: E402
    curves,
    headline_table,
    plot_panels,
    read_results,
    summary_tables,
    verdict,
    write_results,
)
from oed.io import atomic_write_text, read_structures, structure_hash, write_structures  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "06_pools_where_selection_pays"
STRATEGIES = ("random", "fps", "cur", "kmeans", "d-optimal", "i-optimal", "d-optimal@gap-kernel+forces")
BPA_STRATEGIES = ("random", "fps", "d-optimal", "i-optimal", "d-optimal@gap-kernel+forces")
BPA_GAP = GAPSettings(n_sparse=400)
POOLS = {
    "eth+meth": "A. ethanol + methanol, per molecule",
    "3bpa-mixedT": "B. 3BPA, mixed-temperature pool, 300 K target",
}
PANELS = {
    "eth+meth": (("test_eth_meth:ethanol", "force_mae"), ("test_eth_meth:methanol", "force_mae"),
                 ("test_eth_meth:methanol", "energy_mae")),
    "3bpa-mixedT": (("test_300K", "force_mae"), ("test_300K", "energy_mae")),
}
N_TEST_300K = 100
BUDGETS = (25, 50, 100)
N_SEEDS = 3


def bpa_test_and_target(work: Path, n_test: int) -> tuple[Path, Path]:
    """300 K configurations not in the mixed-T pool, split evenly into a test set and a target set."""
    test, target = work / "test_300K.xyz", work / "target_300K.xyz"
    if not (test.exists() and target.exists()):
        pool = {structure_hash(a) for a in read_structures(DATA / "3bpa" / "train_mixedT.xyz")}
        fresh = [a for a in read_structures(DATA / "3bpa" / "train_300K.xyz") if structure_hash(a) not in pool]
        chosen = {id(a) for a in subsample(fresh, n_test)}
        write_structures(test, [a for a in fresh if id(a) in chosen])
        bare = []
        for a in fresh:
            if id(a) not in chosen:  # geometries only: I-optimality needs no labels
                b = a.copy()
                b.calc = None
                bare.append(b)
        write_structures(target, bare)
    return test, target


def configs(out: Path, *, smoke: bool, workers: int | None) -> dict[str, CompareConfig]:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    eth, bpa = DATA / "ethanol", DATA / "3bpa"
    test_300k, target_300k = bpa_test_and_target(work, 10 if smoke else N_TEST_300K)
    common = dict(workers=workers, pool_fraction=0.8, budgets=BUDGETS, test_limit=200)
    a = dict(pool=eth / "train_eth_meth.xyz", tests=(eth / "test_eth_meth.xyz",), e0s_file=eth / "isolated_atoms.xyz",
             strategies=STRATEGIES, n_seeds=N_SEEDS)
    b = dict(pool=bpa / "train_mixedT.xyz", tests=(test_300k,), e0s_file=bpa / "iso_atoms.xyz", target=target_300k,
             strategies=BPA_STRATEGIES, n_seeds=N_SEEDS, model_settings=BPA_GAP)
    if smoke:
        small = {}
        for name, spec, source in (("eth+meth", a, eth / "train_eth_meth.xyz"), ("3bpa-mixedT", b, bpa / "train_mixedT.xyz")):
            pool = work / f"pool_smoke_{name}.xyz"
            if not pool.exists():
                frames = read_structures(source)
                write_structures(pool, frames[::len(frames) // 30][:30])
            small[name] = pool
        a.update(pool=small["eth+meth"], strategies=("random", "i-optimal"), n_seeds=1)
        b.update(pool=small["3bpa-mixedT"], strategies=("random", "i-optimal"), n_seeds=1)
        del b["model_settings"]  # the smoke run's tiny GAP serves both pools
        common.update(budgets=(4, 8), test_limit=5, model_settings=GAPSettings(n_max=4, l_max=3, n_sparse=30))
    return {
        "eth+meth": CompareConfig(out=work / "eth_meth", **a, **common),
        "3bpa-mixedT": CompareConfig(out=work / "3bpa_mixedT", **b, **common),
    }


def render_summary(results_csv: str | Path) -> str:
    """summary.md, from results.csv alone."""
    rows = read_results(results_csv)
    lines = [
        "# Tutorial 6 — pools where selection can pay\n",
        "GAP trained on the first k picks of each strategy (one-shot; replay oracle; each seed draws 80 % of "
        "the pool as candidates shared by all strategies). Errors: energy MAE in meV/atom, force MAE in meV/Å, "
        "mean ± 95 % Student-t interval over seeds. Label efficiency: random labels needed for the same error / "
        "labels used (> 1 is better). AULC: geometric-mean error over the budgets, its ratio to random paired by "
        "seed.\n",
    ]
    for pool, title in POOLS.items():
        subset = [{**r, "strategy": r["strategy"].split("/", 1)[1]} for r in rows if r["strategy"].startswith(pool + "/")]
        if not subset:
            continue
        by_key = curves(subset)
        seeds = len({r["seed"] for r in subset})
        budgets = sorted({r["budget"] for r in subset})
        panels = [p for p in PANELS[pool] if p in by_key]
        lines.append(f"## {title} ({seeds} seeds)\n")
        lines.append("Which wins where:\n")
        for key in panels:
            lines.append(f"- **{key[0]}** ({key[1]}): " + verdict(by_key[key], key[1], "random"))
        lines.append("")
        budget = 100 if 100 in budgets else budgets[-1]
        lines.append(f"At k = {budget}:\n")
        lines.append(headline_table(subset, budget, panels, efficiency_on=panels[0]))
        lines.append(summary_tables(subset, reference="random", second="fps", level=3))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv)
    t0 = time.perf_counter()
    runs = configs(out, smoke=args.smoke, workers=args.workers)
    rows = run_comparisons(runs, lambda pool, strategy: f"{pool}/{strategy}", smoke=args.smoke,
                           describe=POOLS.__getitem__)
    write_results(out / "results.csv", rows)
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv"))
    rows = read_results(out / "results.csv")
    panels = [(f"{t}", m) for pool in POOLS for t, m in PANELS[pool]]
    relabelled = [{**r, "strategy": r["strategy"].split("/", 1)[1]} for r in rows]
    plot_panels(relabelled, out / "learning_curves.png", [p for p in panels if p in curves(relabelled)],
                title="GAP, one-shot: ethanol + methanol pool (left) and 3BPA mixed-T pool (right)")
    print(f"tutorial 6 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
