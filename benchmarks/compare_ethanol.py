"""Headline of the strategy comparison on ethanol: ID and OOD errors at k = 100, label efficiency.

One ``oed compare`` run (GAP, one-shot, replay oracle on the 1000 rMD17 ethanol configurations;
5 seeds, each drawing 80 % of the pool as shared candidates; budgets 25, 50, 100, 200), then one
table: per strategy at k = 100, force MAE on test_MD (in distribution) and on the two normal-mode
sets, energy MAE on H removal, force MAE on methanol (out of distribution), and the
label-efficiency ratio against the two named baselines measured in the same run — random and
FPS (baseline labels needed for the same test_MD force MAE / labels used; > 1 is better).

    python benchmarks/compare_ethanol.py                      # full run (about an hour on 2 cores)
    python benchmarks/compare_ethanol.py --out DIR            # reuse / resume a run directory
    python benchmarks/compare_ethanol.py --quick              # seconds-to-a-minute smoke run (CI)

The run directory keeps every finished cell: a rerun prints the table without fitting anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loops.compare import CompareConfig, run_compare  # noqa: E402
from loops.gap import GAPSettings  # noqa: E402
from loops.report import curves, headline_table  # noqa: E402

DATA = ROOT / "data"
STRATEGIES = ("random", "fps", "cur", "kmeans", "d-optimal", "i-optimal", "d-optimal@gap-kernel+forces")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny pool, small GAP, one seed (CI)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/compare_ethanol[_quick])")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    eth = DATA / "ethanol"
    out = args.out or ROOT / "runs" / ("compare_ethanol_quick" if args.quick else "compare_ethanol")
    methanol = out / "test_methanol.xyz"
    from oed.io import read_structures, write_structures

    if not methanol.exists():
        write_structures(methanol, [a for a in read_structures(eth / "test_eth_meth.xyz")
                                    if a.info.get("config_type") == "methanol"])
    tests = (eth / "test_MD.xyz", DATA / "ethanol_pyscf" / "test_norm_mode_874.xyz",
             DATA / "ethanol_pyscf" / "test_norm_mode_3005.xyz", eth / "test_H_removal.xyz", methanol)
    common = dict(tests=tests, out=out / "run", e0s_file=eth / "isolated_atoms.xyz", workers=args.workers)
    if args.quick:
        pool = out / "pool.xyz"
        if not pool.exists():
            write_structures(pool, read_structures(eth / "train.xyz")[:50])
        config = CompareConfig(pool=pool, strategies=("random", "fps", "d-optimal"), budgets=(5, 10, 20), n_seeds=1,
                               model_settings=GAPSettings(n_max=4, l_max=3, n_sparse=30), test_limit=10, **common)
        budget = 10
    else:
        config = CompareConfig(pool=eth / "train.xyz", strategies=STRATEGIES, budgets=(25, 50, 100, 200), n_seeds=5,
                               test_limit=200, **common)
        budget = 100
    t0 = time.perf_counter()
    rows = run_compare(config, progress=not args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - t0
    panels = [p for p in (("test_MD", "force_mae"), ("test_norm_mode_874", "force_mae"),
                          ("test_norm_mode_3005", "force_mae"), ("test_H_removal", "energy_mae"),
                          ("test_methanol", "force_mae")) if p in curves(rows)]
    print(f"\nGAP, one-shot, {config.n_seeds} seed(s), k = {budget} (mean ± 95% CI); baselines: random, fps\n")
    print(headline_table(rows, budget, panels, efficiency_on=("test_MD", "force_mae")))
    print(f"wall time {seconds:.0f} s (a rerun on the same --out only reads the finished cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
