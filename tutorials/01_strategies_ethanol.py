#!/usr/bin/env python
"""Tutorial 1 — which selection strategy buys the most accuracy per label on ethanol, in and out of distribution?

Pool: the 1000 rMD17 ethanol configurations of ``data/ethanol/train.xyz`` (PBE/def2-SVP). The
pool's own labels are the oracle, revealed only for what a strategy picks (the replay oracle of
:mod:`loops.compare`; PySCF reproduces them to 0.2 meV/Å, docs/design.md §6). Each seed draws 80 % of
the pool as its candidates, shared by all strategies, so the comparison is paired. A GAP
(``loops.gap.GAPSettings()``) is fitted on the first k picks, k = 25, 50, 100, 200, and scored on

- ``test_MD`` — 200 further rMD17 configurations: **in distribution**;
- ``test_norm_mode_874`` / ``test_norm_mode_3005`` — displacements along two normal modes,
  relabelled with PySCF (``data/ethanol_pyscf``): **out of distribution**, with forces;
- ``test_H_removal`` — the O–H bond stretched to breaking: far out of distribution, energies only;
- ``test_methanol`` — the 145 methanol configurations of ``test_eth_meth.xyz`` (its ethanol
  half is test_MD itself): a molecule the pool never shows, **compositional** OOD.

Strategies, one-shot (rank once, label-free): random; the baselines FPS, CUR, k-means medoids;
greedy D-optimal and I-optimal (over the candidates) and a GP information gain on summed SOAP
(the cheap proxy features); and D-/I-optimal in the **GAP's own feature space** — kernel
features with energy and force rows (``@gap-kernel+forces``). Sequential (rounds at each
budget, refits in between): random; info-gain with GP hyperparameters refitted on the labels;
**gap-variance** (the GAP's own predictive variance); D-optimal in GAP kernel space. One-shot
designs use 5 seeds, the (costlier) sequential ones 3.

Run::

    python tutorials/01_strategies_ethanol.py              # full run (about 1 h on 2 cores)
    python tutorials/01_strategies_ethanol.py --smoke --out /tmp/t1   # tiny version (< 1 min)

The full run writes ``tutorials/outputs/01_strategies_ethanol/``: ``results.csv`` (tidy rows;
sequential strategies are prefixed ``seq:``), ``summary.md`` (rebuilt from results.csv alone by
:func:`render_summary`) and two figures. The comparison runs themselves live in ``OUT/work/``
(git-ignored); rerunning resumes them and redoes nothing that is finished.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import DATA, ROOT, methanol_test_file, parse_args, run_comparisons  # noqa: E402

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
from oed.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "01_strategies_ethanol"
ONESHOT = ("random", "fps", "cur", "kmeans", "d-optimal", "i-optimal", "info-gain",
           "d-optimal@gap-kernel+forces", "i-optimal@gap-kernel+forces")
SEQUENTIAL = ("random", "info-gain", "gap-variance", "d-optimal@gap-kernel+forces")
SEQ = "seq:"
#: (test set, metric) shown in the figures and the headline table.
PANELS = (
    ("test_MD", "force_mae"),
    ("test_norm_mode_874", "force_mae"),
    ("test_norm_mode_3005", "force_mae"),
    ("test_H_removal", "energy_mae"),
    ("test_methanol", "force_mae"),
)
HEADLINE_BUDGET = 100


def test_files(work: Path) -> tuple[Path, ...]:
    """The test files; the methanol part of test_eth_meth.xyz is written to ``work`` once."""
    eth = DATA / "ethanol"
    return (eth / "test_MD.xyz", DATA / "ethanol_pyscf" / "test_norm_mode_874.xyz",
            DATA / "ethanol_pyscf" / "test_norm_mode_3005.xyz", eth / "test_H_removal.xyz",
            methanol_test_file(work))


def configs(out: Path, *, smoke: bool, workers: int | None) -> dict[str, CompareConfig]:
    """The two comparisons: one-shot and sequential, on the same seeds and candidates."""
    work = out / "work"
    common = dict(tests=test_files(work), e0s_file=DATA / "ethanol" / "isolated_atoms.xyz", workers=workers,
                  pool_fraction=0.8)
    if smoke:
        from ase.io import read, write

        pool = work / "pool_smoke.xyz"
        if not pool.exists():
            work.mkdir(parents=True, exist_ok=True)
            write(pool, read(DATA / "ethanol" / "train.xyz", ":60"))
        small = GAPSettings(n_max=4, l_max=3, n_sparse=30)
        common.update(pool=pool, budgets=(4, 8), n_seeds=1, model_settings=small, test_limit=8)
        return {
            "": CompareConfig(out=work / "oneshot", strategies=("random", "fps", "d-optimal@gap-kernel+forces"),
                              **common),
            SEQ: CompareConfig(out=work / "sequential", strategies=("random", "gap-variance"), mode="sequential",
                               **common),
        }
    common.update(pool=DATA / "ethanol" / "train.xyz", budgets=(25, 50, 100, 200), n_seeds=5, test_limit=200)
    return {
        "": CompareConfig(out=work / "oneshot", strategies=ONESHOT, **common),
        # Three seeds for the sequential designs: each of their rounds refits (and gap-variance
        # predicts variances over all candidates), so they cost several times a one-shot cell.
        SEQ: CompareConfig(out=work / "sequential", strategies=SEQUENTIAL, mode="sequential",
                           **{**common, "n_seeds": 3}),
    }


def render_summary(results_csv: str | Path) -> str:
    """summary.md, from results.csv alone."""
    rows = read_results(results_csv)
    oneshot = [r for r in rows if not r["strategy"].startswith(SEQ)]
    sequential = [r for r in rows if r["strategy"].startswith(SEQ)]
    seeds = len({r["seed"] for r in oneshot or rows})
    seq_seeds = len({r["seed"] for r in sequential})
    budgets = sorted({r["budget"] for r in rows})
    panels = [p for p in PANELS if p in curves(rows)]
    lines = [
        "# Tutorial 1 — selection strategies on ethanol, in and out of distribution\n",
        f"GAP trained on the first k picks of each strategy (k = {', '.join(map(str, budgets))}), "
        f"{seeds} seed(s){f' ({seq_seeds} for the sequential designs)' if sequential and seq_seeds != seeds else ''}"
        ": each seed draws 80 % of the 1000-configuration rMD17 pool as candidates, "
        "shared by every strategy. Errors: energy MAE in meV/atom, force MAE in meV/Å, mean ± 95 % "
        "Student-t interval over seeds. Label efficiency: random labels needed to reach the same "
        "error / labels used (> 1 is better; `>`/`<` mark bounds outside random's measured range). "
        "AULC: geometric-mean error over the budgets; its ratio to random is paired by seed. "
        "`@gap-kernel+forces`: selection in the GAP's own kernel features with energy and force rows; "
        "otherwise summed SOAP, energy rows. `seq:` strategies select round by round with refits.\n",
        "## Which wins where\n",
    ]
    for label, subset, ref in (("One-shot", oneshot, "random"), ("Sequential", sequential, f"{SEQ}random")):
        if not subset:
            continue
        by_key = curves(subset)
        for key in panels:
            if key in by_key:
                lines.append(f"- {label}, **{key[0]}**: " + verdict(by_key[key], key[1], ref))
    lines.append("")
    budget = HEADLINE_BUDGET if HEADLINE_BUDGET in budgets else budgets[len(budgets) // 2]
    lines.append(f"## At k = {budget}\n")
    lines.append(headline_table(rows, budget, panels, efficiency_on=("test_MD", "force_mae")
                                if ("test_MD", "force_mae") in curves(rows) else None))
    if oneshot:
        lines.append("## One-shot designs\n")
        lines.append(summary_tables(oneshot, reference="random", second="fps", level=3))
    if sequential:
        lines.append("## Sequential designs\n")
        lines.append(summary_tables(sequential, reference=f"{SEQ}random", second=None, level=3))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv)
    t0 = time.perf_counter()
    runs = configs(out, smoke=args.smoke, workers=args.workers)
    rows = run_comparisons(runs, lambda prefix, strategy: prefix + strategy, smoke=args.smoke,
                           describe=lambda prefix: f"{prefix.rstrip(':') or 'oneshot'} comparison")
    write_results(out / "results.csv", rows)
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv"))
    rows = read_results(out / "results.csv")  # plots from exactly what was written
    panels = [p for p in PANELS if p in curves(rows)]
    oneshot = [r for r in rows if not r["strategy"].startswith(SEQ)]
    sequential = [r for r in rows if r["strategy"].startswith(SEQ)]
    plot_panels(oneshot, out / "learning_curves_oneshot.png", panels, title="One-shot designs, GAP on ethanol")
    plot_panels(sequential, out / "learning_curves_sequential.png", panels, reference=f"{SEQ}random",
                title="Sequential designs, GAP on ethanol")
    print(f"tutorial 1 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
