"""The theory check of ``oed plan`` on ethanol, against the GAP errors tutorial 10 measured.

The sparse-GP check (:mod:`loops.plan_theory`) on tutorial 10's ethanol setting: the seed set is
its 20 random pool configurations (rng 0) with DFT labels, the pool ``data/ethanol/train.xyz``
labelled with GFN2-xTB (only the configurations the check reads: the seed set and the nested
random subsets of 25, 50, 100, 200), the calibration ratios those of tutorial 10's committed
``plan_ethanol.json``. Also the same estimate on the subsets' *DFT* labels, to separate the
sparse-GP model's own error from the proxy's. Compared with tutorial 10's measured mean GAP
error of random picks (3 seeds, DFT labels, test_MD).

    python benchmarks/plan_theory_ethanol.py      # ~2 min on 2 cores

Writes ``benchmarks/outputs/plan_theory_ethanol.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (25, 50, 100, 200)


def main() -> None:
    from loops.cheap import CheapLabels
    from loops.gap import GAPModel
    from loops.oracles import _with_label, bare
    from loops.parallel import Executor
    from loops.plan_theory import sparse_gp_estimate, theory_check
    from oed.io import atomic_write_text, read_structures

    pool = read_structures(ROOT / "data" / "ethanol" / "train.xyz")
    seed_idx = sorted(int(i) for i in np.random.default_rng(0).choice(len(pool), size=20, replace=False))
    order = np.random.default_rng(0).permutation(len(pool))  # theory_check's order over the usable pool
    need = sorted(set(seed_idx) | set(int(i) for i in order[:max(BUDGETS)]))
    with tempfile.TemporaryDirectory() as tmp:
        cheap = CheapLabels([bare(pool[i]) for i in need], Path(tmp) / "proxy.db", oracle="xtb:gfn2-xtb",
                            executor=Executor(workers=None, progress=False, threads=1))
        energies, forces = cheap.energies_forces(range(len(need)))
    px = {i: _with_label(bare(pool[i]), e, f, "xtb:gfn2-xtb") for i, e, f in zip(need, energies, forces)}
    # theory_check draws its random subsets from the usable pool in the order of rng 0 over the whole
    # pool: configurations it never reads need no proxy label, so they are passed unlabelled
    pool_px = [px.get(i, bare(a)) for i, a in enumerate(pool)]
    plan = json.loads((ROOT / "tutorials" / "outputs" / "10_proxy_forecast" / "plan_ethanol.json").read_text())
    ratios = {m: (plan["calibration"][f"{m}_ratio"]["ratio"],) for m in ("force_mae", "energy_mae")}
    model = GAPModel()
    theory = theory_check(model, [pool[i] for i in seed_idx], [px[i] for i in seed_idx], pool_px, BUDGETS, ratios)
    spec = model.feature_spec(forces=True, prior="kmm")
    dft = [sparse_gp_estimate([pool[int(i)] for i in order[:k]], spec) for k in BUDGETS]
    measured = plan_measured()
    result = {"theory": theory, "dft_labels": {"budgets": list(BUDGETS), "force_mae": [d["force_mae"] for d in dft],
                                               "energy_mae": [d["energy_mae"] for d in dft]},
              "measured_random": measured, "proxy_forecast_random": plan["strategies"]["random"]["force_mae"]}
    out = ROOT / "benchmarks" / "outputs" / "plan_theory_ethanol.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "theory"}, indent=1))
    print("theory random force MAE:", theory["random"]["force_mae"], file=sys.stderr)


def plan_measured() -> dict:
    """Tutorial 10's measured mean GAP error of random picks per budget (forecast.csv)."""
    import csv

    rows = csv.DictReader((ROOT / "tutorials" / "outputs" / "10_proxy_forecast" / "forecast.csv").open())
    got = {}
    for r in rows:
        if r["system"] == "ethanol" and r["strategy"] == "random" and r["metric"] in ("force_mae", "energy_mae"):
            got.setdefault(r["metric"], {})[int(r["budget"])] = float(r["measured"])
    return {m: [v[k] for k in BUDGETS] for m, v in got.items()}


if __name__ == "__main__":
    main()
