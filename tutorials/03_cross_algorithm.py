#!/usr/bin/env python
"""Tutorial 3 — cross-algorithm transfer: is data chosen for one model good for another?

Niblett et al. (JCTC 2024, arXiv:2409.05590) ask whether a training set selected with one
model (e.g. GAP) serves another (e.g. MACE). Here every selection is scored with both models,
on the 1000-configuration rMD17 ethanol pool (replay oracle, 80 % of the pool per seed as
shared candidates), at k = 25 and 50, 3 seeds:

selection (rows)                            driven by
- ``random``                                nothing (the baseline)
- ``fps``                                   summed SOAP distances
- ``d-optimal@gap-kernel+forces``           the GAP's kernel features with force rows (one-shot)
- ``seq:d-optimal@mace``                    the MACE fitted on the labels so far: D-optimal on its descriptors
                                            (sequential, MACE only; its first 25 picks are random)

Random picks do not depend on the mode, so ``random`` is the baseline of every row.

trained and scored (columns): GAP (``loops.gap``) and MACE (``loops.mace``: the small CPU default
architecture, trained for 60 epochs instead of 150 so that the full run takes about 20 minutes on
2 cores; a fully trained MACE is ~25 % more accurate at these budgets).
A selection "transfers" when the other model gains from it as much as the model that chose it.

Run::

    python tutorials/03_cross_algorithm.py              # full run (about 20 min on 2 cores)
    python tutorials/03_cross_algorithm.py --smoke --out /tmp/t3   # tiny version

Outputs in ``--out`` (default ``tutorials/outputs/03_cross_algorithm/``): ``results.csv`` (tidy;
``strategy`` is ``<trained model>/<selection>``), ``summary.md`` (rebuilt from results.csv alone
by :func:`render_summary`), ``learning_curves.png``. The comparisons run in ``OUT/work/``
(git-ignored) and resume.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import DATA, ROOT, methanol_test_file, parse_args, run_comparisons  # noqa: E402

from loops.compare import CompareConfig  # noqa: E402
from loops.gap import GAPSettings  # noqa: E402
from loops.report import (  # noqa: E402
    curves,
    label_efficiency,
    plot_panels,
    read_results,
    write_results,
)
from oed.io import atomic_write_text, read_structures, write_structures  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "03_cross_algorithm"
MODELS = ("gap", "mace")
ONESHOT = ("random", "fps", "d-optimal@gap-kernel+forces")
SEQUENTIAL = ("d-optimal@mace",)
MACE_EPOCHS = 60
SEQ = "seq:"
TEST_SETS = (("test_MD", "force_mae"), ("test_norm_mode_874", "force_mae"), ("test_methanol", "force_mae"))


def configs(out: Path, *, smoke: bool, workers: int | None) -> dict[tuple[str, str], CompareConfig]:
    """(model, mode prefix) → comparison."""
    work = out / "work"
    eth = DATA / "ethanol"
    tests = (eth / "test_MD.xyz", DATA / "ethanol_pyscf" / "test_norm_mode_874.xyz", methanol_test_file(work))
    common = dict(tests=tests, e0s_file=eth / "isolated_atoms.xyz", workers=workers, pool_fraction=0.8)
    from loops.mace import MACESettings

    settings = {"gap": None, "mace": MACESettings(max_num_epochs=MACE_EPOCHS)}
    if smoke:
        pool = work / "pool_smoke.xyz"
        if not pool.exists():
            write_structures(pool, read_structures(eth / "train.xyz")[:40])
        common.update(pool=pool, budgets=(4, 6), n_seeds=1, test_limit=6)
        settings = {"gap": GAPSettings(n_max=4, l_max=3, n_sparse=30),
                    "mace": MACESettings(num_channels=4, max_ell=1, correlation=1, num_interactions=1,
                                         radial_mlp=(8,), max_num_epochs=3, batch_size=2)}
        # MACE costs ~10 s per fit even when tiny (imports, TorchScript): two MACE chains only
        return {
            ("gap", ""): CompareConfig(out=work / "gap_oneshot", strategies=("random", "d-optimal@gap-kernel+forces"),
                                       model="gap", model_settings=settings["gap"], **common),
            ("mace", SEQ): CompareConfig(out=work / "mace_sequential", strategies=("random", "d-optimal@mace"),
                                         model="mace", model_settings=settings["mace"], mode="sequential", **common),
        }
    common.update(pool=eth / "train.xyz", budgets=(25, 50), n_seeds=3, test_limit=200)
    runs = {}
    for model in MODELS:
        runs[(model, "")] = CompareConfig(out=work / f"{model}_oneshot", strategies=ONESHOT, model=model,
                                          model_settings=settings[model], **common)
    # MACE-driven selection is scored on MACE only: on GAP it would add a MACE fit per round for
    # selection on top of each GAP fit (left out to keep the full run near 20 minutes).
    runs[("mace", SEQ)] = CompareConfig(out=work / "mace_sequential", strategies=SEQUENTIAL, model="mace",
                                        model_settings=settings["mace"], mode="sequential", **common)
    return runs


def _split(strategy: str) -> tuple[str, str]:
    model, _, selection = strategy.partition("/")
    return model, selection


def _reference(cs, model: str, selection: str):
    """The random curve a selection is measured against: sequential random when there is one."""
    if selection.startswith(SEQ) and f"{model}/{SEQ}random" in cs:
        return cs[f"{model}/{SEQ}random"]
    return cs.get(f"{model}/random")


def render_summary(results_csv: str | Path) -> str:
    """summary.md, from results.csv alone."""
    rows = read_results(results_csv)
    by_key = curves(rows)
    budgets = sorted({r["budget"] for r in rows})
    seeds = len({r["seed"] for r in rows})
    selections = sorted({_split(r["strategy"])[1] for r in rows}, key=lambda s: (s.startswith(SEQ), s != "random", s))
    models = [m for m in MODELS if any(_split(r["strategy"])[0] == m for r in rows)]
    budget = 100 if 100 in budgets else budgets[-1]
    lines = [
        "# Tutorial 3 — cross-algorithm transfer (GAP ↔ MACE) on ethanol\n",
        f"Each selection (rows) trains both models (columns); k = {', '.join(map(str, budgets))}, {seeds} seed(s), "
        "replay oracle on the rMD17 pool, 80 % of it per seed as candidates shared by all selections. Force MAE "
        "in meV/Å, mean ± 95 % CI over seeds. Efficiency: labels the *same model* needs with random selection "
        "(`random`; `seq:random` for sequential rows where it was run) to reach the same error, divided "
        "by the labels used (> 1: the selection helps that model).\n",
    ]
    for test_set, metric in TEST_SETS:
        if not any(k == (test_set, metric) for k in by_key):
            continue
        cs = by_key[(test_set, metric)]
        lines.append(f"## {test_set}, k = {budget}\n")
        lines.append("| selection | " + " | ".join(f"{m.upper()} {metric.replace('_', ' ')}" for m in models)
                     + " | " + " | ".join(f"{m.upper()} efficiency" for m in models) + " |")
        lines.append("|---|" + "---:|" * (2 * len(models)))
        for sel in selections:
            cells, effs = [], []
            for m in models:
                c = cs.get(f"{m}/{sel}")
                if c is None or budget not in c.values:
                    cells.append("–")
                    effs.append("–")
                    continue
                mean, half = c.interval(budget)
                cells.append(f"{mean:.1f}" + ("" if math.isnan(half) else f" ± {half:.1f}"))
                ref = _reference(cs, m, sel)
                if ref is None or sel in ("random", f"{SEQ}random"):
                    effs.append("–")
                else:
                    effs.append(str(label_efficiency(mean, budget, ref.budgets, ref.mean())))
            lines.append(f"| {sel} | " + " | ".join(cells) + " | " + " | ".join(effs) + " |")
        lines.append("")
    lines.append("## In words\n")
    cs = by_key.get(("test_MD", "force_mae"), {})
    for sel in selections:
        if sel in ("random", f"{SEQ}random"):
            continue
        parts = []
        for m in models:
            c = cs.get(f"{m}/{sel}")
            ref = _reference(cs, m, sel)
            if c is None or ref is None or budget not in c.values:
                continue
            mean = float(np.mean(list(c.values[budget].values())))
            parts.append(f"{m.upper()} {label_efficiency(mean, budget, ref.budgets, ref.mean())}")
        if parts:
            lines.append(f"- `{sel}` on test_MD at k = {budget}, efficiency against the same model's random: "
                         + ", ".join(parts) + ".")
    lines.append("\nA selection transfers when its efficiency for the other model is as high as for the model that "
                 "drove it; below 1 it costs labels relative to random for that model.")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv)
    t0 = time.perf_counter()
    runs = configs(out, smoke=args.smoke, workers=args.workers)
    rows = run_comparisons(runs, lambda key, strategy: f"{key[0]}/{key[1]}{strategy}", smoke=args.smoke,
                           describe=lambda key: f"{key[0]}, {key[1].rstrip(':') or 'oneshot'}")
    write_results(out / "results.csv", rows)
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv"))
    rows = read_results(out / "results.csv")
    panels = [(t, m) for t, m in TEST_SETS if (t, m) in curves(rows)]
    plot_panels(rows, out / "learning_curves.png", panels, reference="gap/random",
                title="GAP and MACE trained on each selection (model/selection)")
    print(f"tutorial 3 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
