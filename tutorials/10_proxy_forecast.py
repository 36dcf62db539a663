#!/usr/bin/env python
"""Tutorial 10 — can a budget forecast made before any DFT predict each strategy's measured error curve?

`oed plan --proxy xtb:gfn2-xtb` (``loops.plan``) labels the candidate pool and the target with
GFN2-xTB, runs every strategy on those proxy labels exactly as ``oed compare`` runs it on DFT
labels (same GAP settings, seeds and candidates, so the label-free strategies make the same
picks), and moves the simulated curves to the DFT level by a ratio calibrated on a small
DFT-labelled seed set (5-fold cross-validation of the GAP on the seed set's DFT and xTB labels).
A power law per curve gives the budget to reach a target error.

Here the forecast is put against measurement, on two systems:

- **ethanol**: tutorial 1's nine one-shot strategies on the rMD17 pool (PBE/def2-SVP),
  k = 25, 50, 100, 200, measured on test_MD (200 configurations, as tutorial 1 scores it);
- **3bpa**: tutorial 6B's five strategies on the mixed-temperature 3BPA pool (ωB97X/6-31G(d),
  ``train_mixedT``), k = 25, 50, 100, GAP with 400 sparse points, measured on 100 held-out
  ``train_300K`` frames; the forecast's target is tutorial 6B's 369 further 300 K geometries
  (what a user would have: unlabelled configurations where the model will run), which are also
  I-optimality's target there.

Each seed set is 20 random pool configurations with their DFT labels — the only DFT the
forecast uses. Reported (goals of the issue "A budget forecast a user can plan
with"): Spearman ρ between forecast and measured force MAE across strategies at each budget
(goal ≥ 0.8), the share of (strategy, budget) cells forecast within ±25 % (goal ≥ 80 %), the
forecast budget to a target force MAE against the measured one (±25 %), and the forecast's cost
against the DFT labels it plans for k = 200 (goal ≤ 5 %).

Run::

    python tutorials/10_proxy_forecast.py            # full run; measured curves: tutorial 1's committed results
    python tutorials/10_proxy_forecast.py --smoke --out /tmp/t10   # tiny version, measures its own curves
    python tutorials/10_proxy_forecast.py --summary-only   # forecast.csv and summary from the committed files

Outputs in ``--out`` (default ``tutorials/outputs/10_proxy_forecast/``): ``forecast.csv`` (one row
per system, strategy, budget and metric: forecast, bounds, proxy-level value, measured), ``plan_<system>.json`` (what
``oed plan --json`` prints), ``summary.md`` (rebuilt from those two alone by :func:`render_summary`)
and ``forecast_vs_measured.png``. The forecast's own work (proxy labels, simulated runs) lives in
``OUT/work/`` (git-ignored); a rerun reuses it.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import DATA, ROOT, parse_args  # noqa: E402

from loops.gap import GAPSettings  # noqa: E402
from loops.plan import METRICS, PlanConfig, budget_to_reach, plot_plan, run_plan  # noqa: E402
from loops.report import read_results  # noqa: E402
from oed.io import atomic_write_text, read_structures, write_structures  # noqa: E402
from oed.plots import save_figure  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "10_proxy_forecast"
T1_RESULTS = ROOT / "tutorials" / "outputs" / "01_strategies_ethanol" / "results.csv"
T6_RESULTS = ROOT / "tutorials" / "outputs" / "06_pools_where_selection_pays" / "results.csv"
T6_PATH = ROOT / "tutorials" / "06_pools_where_selection_pays.py"
SYSTEMS = ("ethanol", "3bpa")
STRATEGIES = ("random", "fps", "cur", "kmeans", "d-optimal", "i-optimal", "info-gain",
              "d-optimal@gap-kernel+forces", "i-optimal@gap-kernel+forces")
TEST_SETS = {"ethanol": "test_MD", "3bpa": "test_300K"}
#: tutorial 6B's strategies carry the pool's name in results.csv
MEASURED_PREFIX = {"ethanol": "", "3bpa": "3bpa-mixedT/"}
SEED_SET = 20
N_SEEDS = 3
#: meV/Å: reached by the measured strategies inside their budgets (ethanol k = 50–200, 3BPA k = 25–100)
TARGET_ERRORS = {"ethanol": (60.0, 45.0), "3bpa": (150.0, 120.0)}
TOLERANCE = 0.25


def seed_set(work: Path, pool_path: Path, n: int, name: str = "seed_set") -> Path:
    """``n`` random pool configurations (rng 0) with their DFT labels: the forecast's only DFT."""
    path = work / f"{name}.xyz"
    if not path.exists():
        pool = read_structures(pool_path)
        idx = np.random.default_rng(0).choice(len(pool), size=n, replace=False)
        write_structures(path, [pool[int(i)] for i in sorted(idx)])
    return path


def _tutorial6():
    import importlib.util

    t6 = sys.modules.get("tutorial06")
    if t6 is None:
        spec = importlib.util.spec_from_file_location("tutorial06", T6_PATH)
        t6 = sys.modules["tutorial06"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(t6)
    return t6


def plan_config(out: Path, system: str, *, smoke: bool, workers: int | None) -> tuple[PlanConfig, dict]:
    """The forecast of ``system``, and (smoke only) the settings of the DFT comparison it is checked against."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if system == "3bpa":
        return _plan_3bpa(work, smoke=smoke, workers=workers)
    eth = DATA / "ethanol"
    common = dict(e0s_file=eth / "isolated_atoms.xyz", workers=workers, pool_fraction=0.8)
    if smoke:
        from ase.io import read, write

        pool = work / "pool_smoke.xyz"
        if not pool.exists():
            write(pool, read(eth / "train.xyz", ":60"))
        target = work / "target_smoke.xyz"
        if not target.exists():
            write(target, read(eth / "test_MD.xyz", ":8"))
        small = GAPSettings(n_max=4, l_max=3, n_sparse=30)
        cfg = PlanConfig(pool=pool, out=work / "plan", strategies=("random", "fps"), budgets=(4, 8), target=target,
                         train=seed_set(work, pool, 8), n_seeds=1, model_settings=small, folds=4,
                         target_error=300.0, target_limit=None, **common)
        return cfg, dict(pool=pool, tests=(target,), budgets=(4, 8), n_seeds=1, model_settings=small,
                         strategies=("random", "fps"))
    pool = eth / "train.xyz"
    cfg = PlanConfig(pool=pool, out=work / "plan", strategies=STRATEGIES, budgets=(25, 50, 100, 200),
                     target=eth / "test_MD.xyz", train=seed_set(work, pool, SEED_SET), n_seeds=N_SEEDS,
                     target_error=TARGET_ERRORS["ethanol"][0], target_limit=200, **common)
    return cfg, {}


def _plan_3bpa(work: Path, *, smoke: bool, workers: int | None) -> tuple[PlanConfig, dict]:
    """Tutorial 6B's setting: mixed-T pool, 300 K target, its strategies, budgets and GAP."""
    t6 = _tutorial6()
    bpa = DATA / "3bpa"
    test_300k, target_300k = t6.bpa_test_and_target(work, 10 if smoke else t6.N_TEST_300K)
    common = dict(e0s_file=bpa / "iso_atoms.xyz", workers=workers, pool_fraction=0.8, target=target_300k,
                  design_target=target_300k)
    if smoke:
        pool = work / "pool_smoke_3bpa.xyz"
        if not pool.exists():
            frames = read_structures(bpa / "train_mixedT.xyz")
            write_structures(pool, frames[::len(frames) // 30][:30])
        small = GAPSettings(n_max=4, l_max=3, n_sparse=30)
        cfg = PlanConfig(pool=pool, out=work / "plan_3bpa", strategies=("random", "i-optimal"), budgets=(4, 8),
                         train=seed_set(work, pool, 8, "seed_set_3bpa"), n_seeds=1, model_settings=small, folds=4,
                         target_error=400.0, target_limit=8, **common)
        return cfg, dict(pool=pool, tests=(test_300k,), budgets=(4, 8), n_seeds=1, model_settings=small,
                         strategies=("random", "i-optimal"), e0s_file=bpa / "iso_atoms.xyz", target=target_300k,
                         test_limit=5)
    pool = bpa / "train_mixedT.xyz"
    cfg = PlanConfig(pool=pool, out=work / "plan_3bpa", strategies=t6.BPA_STRATEGIES, budgets=t6.BUDGETS,
                     train=seed_set(work, pool, SEED_SET, "seed_set_3bpa"), n_seeds=t6.N_SEEDS,
                     model_settings=t6.BPA_GAP, target_error=TARGET_ERRORS["3bpa"][0], target_limit=200, **common)
    return cfg, {}


def measured_rows(out: Path, system: str, dft: dict, workers: int | None) -> list[dict]:
    """The committed rows of tutorial 1 (ethanol) or 6B (3BPA) for a full run, strategy names as the
    forecast's; for a smoke run, a DFT comparison with the smoke settings."""
    if not dft:
        prefix = MEASURED_PREFIX[system]
        rows = read_results(T1_RESULTS if system == "ethanol" else T6_RESULTS)
        return [{**r, "strategy": r["strategy"][len(prefix):]} for r in rows if r["strategy"].startswith(prefix)]
    from loops.compare import CompareConfig, run_compare

    dft = {"e0s_file": DATA / "ethanol" / "isolated_atoms.xyz", **dft}
    cfg = CompareConfig(out=out / "work" / f"measured_{system}", workers=workers, pool_fraction=0.8, **dft)
    return run_compare(cfg, progress=False, log=lambda m: print(m, flush=True))


def tidy(system: str, plan: dict, measured: list[dict], test_set: str) -> list[dict]:
    """forecast.csv rows: system, strategy, budget, metric, forecast, lower, upper, proxy, measured (mean over
    seeds), n_measured and measured_sem (the mean's standard error over seeds)."""
    rows = []
    for name, s in plan["strategies"].items():
        for metric in METRICS:
            if metric not in s:
                continue
            for j, k in enumerate(plan["budgets"][: len(s[metric])]):
                vals = [float(r["value"]) for r in measured if r["strategy"] == name and int(r["budget"]) == k
                        and r["test_set"] == test_set and r["metric"] == metric]
                rows.append({"system": system, "strategy": name, "budget": k, "metric": metric, "forecast": s[metric][j],
                             "lower": s[f"{metric}_lower"][j], "upper": s[f"{metric}_upper"][j],
                             "proxy": s[f"proxy_{metric}"][j],
                             "measured": float(np.mean(vals)) if vals else "", "n_measured": len(vals),
                             "measured_sem": float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else ""})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    import io

    keys = ("system", "strategy", "budget", "metric", "forecast", "lower", "upper", "proxy", "measured", "n_measured",
            "measured_sem")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(float(r[k])) if isinstance(r[k], float) else r[k]) for k in keys})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["budget"] = int(r["budget"])
        for k in ("forecast", "lower", "upper", "proxy"):
            r[k] = float(r[k])
        r["measured"] = float(r["measured"]) if r["measured"] not in ("", None) else None
        r["measured_sem"] = float(r["measured_sem"]) if r.get("measured_sem") not in ("", None) else None
    return rows


def ranking_ceiling(measured, sem, draws: int = 2000) -> float:
    """Median Spearman ρ between the measured means and a replicate of them (each mean redrawn from
    N(mean, sem²), fixed rng): what a forecast of the expected errors could reach against a
    measurement this noisy. NaN without standard errors."""
    from scipy.stats import spearmanr

    m = np.asarray(measured, dtype=float)
    if len(m) < 3 or any(s is None for s in sem):
        return float("nan")
    s = np.asarray(sem, dtype=float)
    rng = np.random.default_rng(0)
    return float(np.median([spearmanr(m, m + s * rng.standard_normal(len(m))).statistic for _ in range(draws)]))


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if len(x) > 2 else float("nan")


def _g(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def render_summary(forecast_csv: Path, plan_dir: Path) -> str:
    """summary.md from forecast.csv and the plan_<system>.json files beside it, alone."""
    all_rows = [r for r in read_csv(forecast_csv) if r["measured"] is not None]
    lines = ["# Tutorial 10 — the proxy-teacher forecast against measured learning curves\n"]
    for system in [s for s in SYSTEMS if any(r["system"] == s for r in all_rows)]:
        lines += _system_summary(system, [r for r in all_rows if r["system"] == system],
                                 json.loads((Path(plan_dir) / f"plan_{system}.json").read_text()))
    return "\n".join(lines)


def _system_summary(system: str, rows: list[dict], plan: dict) -> list[str]:
    cal, cost = plan["calibration"], plan["cost"]
    budgets = sorted({r["budget"] for r in rows})
    lines = [
        f"## {system}\n",
        f"Forecast (`oed plan --proxy {plan['proxy']}`): every strategy run on GFN2-xTB labels of the pool with the "
        f"same GAP, seeds and candidates as the measured run ({plan['n_seeds']} seed(s)), scored on xTB labels of "
        f"the target, then multiplied by the DFT/xTB error ratio of the calibration ({cal['source']}). Measured: "
        f"the GAP's mean error over seeds on DFT labels of {TEST_SETS[system]}. Bounds: 95 %, the seeds' spread and "
        "the calibration's interval combined.\n",
    ]
    if "force_mae_ratio" in cal:
        f, e = cal["force_mae_ratio"], cal["energy_mae_ratio"]
        lines.append(f"Calibration ratio (DFT / proxy error): force {f['ratio']:.3g} [{f['lower']:.3g}, {f['upper']:.3g}], "
                     f"energy {e['ratio']:.3g} [{e['lower']:.3g}, {e['upper']:.3g}].\n")
    for metric, unit in (("force_mae", "meV/Å"), ("energy_mae", "meV/atom")):
        sub = [r for r in rows if r["metric"] == metric]
        if not sub:
            continue
        lines += [f"### {metric.replace('_', ' ')} ({unit}): forecast [bounds] / measured\n",
                  "| strategy | " + " | ".join(f"k={k}" for k in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for name in sorted({r["strategy"] for r in sub}):
            cells = {r["budget"]: r for r in sub if r["strategy"] == name}
            lines.append(f"| {name} | " + " | ".join(
                f"{_g(cells[k]['forecast'])} [{_g(cells[k]['lower'])}, {_g(cells[k]['upper'])}] / "
                f"{_g(cells[k]['measured'])}" if k in cells else "–" for k in budgets) + " |")
        rhos, within = [], []
        lines += ["", "| budget | Spearman ρ (forecast vs measured, across strategies) | ρ ceiling of the measurement "
                      "| cells within ±25 % | forecast / measured (geometric mean) | furthest off |",
                  "|---:|---:|---:|---:|---:|---|"]
        for k in budgets:
            at = [r for r in sub if r["budget"] == k]
            rho = _spearman([r["forecast"] for r in at], [r["measured"] for r in at])
            ceiling = ranking_ceiling([r["measured"] for r in at], [r.get("measured_sem") for r in at])
            ratio = [r["forecast"] / r["measured"] for r in at]
            ok = [abs(x - 1) <= TOLERANCE for x in ratio]
            rhos.append(rho)
            within += ok
            gm = math.exp(np.mean(np.log(ratio)))
            worst = max(range(len(at)), key=lambda i: abs(math.log(ratio[i] / gm)))
            lines.append(f"| {k} | {rho:.3g} | {_g(ceiling)} | {sum(ok)}/{len(ok)} | {gm:.3g} | "
                         f"{at[worst]['strategy']} ({ratio[worst]:.3g}) |")
        lines.append(f"\nAll budgets: {sum(within)}/{len(within)} cells ({100 * sum(within) / len(within):.0f} %) within "
                     f"±25 % (goal ≥ 80 %); ρ ≥ 0.8 at {sum(r >= 0.8 for r in rhos)} of {len(rhos)} budgets "
                     "(goal: every budget). ρ ceiling: the median ρ between the measured means and a replicate "
                     "of them drawn from their standard errors over seeds; a forecast below it is wrong, not "
                     "outvoted by noise. Furthest off: the strategy whose forecast/measured ratio is furthest "
                     "from the budget's geometric mean (what breaks the ranking).\n")
    force = [r for r in rows if r["metric"] == "force_mae"]
    if force:
        lines += ["### Budget to a target force MAE (meV/Å): forecast (power law / interpolation) vs measured\n",
                  "| strategy | target | forecast budget | measured budget | forecast / measured |",
                  "|---|---:|---:|---:|---:|"]
        hits = []
        for target in TARGET_ERRORS.get(system, ()):
            for name in sorted({r["strategy"] for r in force}):
                at = sorted((r for r in force if r["strategy"] == name), key=lambda r: r["budget"])
                ks = [r["budget"] for r in at]
                kf, _ = budget_to_reach(ks, [r["forecast"] for r in at], target)
                meas = [r["measured"] for r in at]
                if not (min(meas) <= target <= max(meas)):
                    lines.append(f"| {name} | {target:g} | {kf:.0f} | outside the measured range | – |")
                    continue
                km, _ = budget_to_reach(ks, meas, target)
                hits.append(abs(kf / km - 1) <= TOLERANCE)
                lines.append(f"| {name} | {target:g} | {kf:.0f} | {km:.0f} | {kf / km:.2f} |")
        if hits:
            lines.append(f"\nWithin ±25 % of the measured budget: {sum(hits)}/{len(hits)}.\n")
    lines += ["### Cost\n",
              f"Proxy labels: {cost['proxy_labels']} GFN2-xTB calculations, {cost['proxy_label_seconds']:.0f} s; "
              f"simulated fits and scoring: {cost['simulated_fit_seconds']:.0f} s; calibration fits: "
              f"{cost['calibration_seconds']:.0f} s; in all {cost['total_seconds']:.0f} s on 2 shared cores, "
              f"{100 * cost['fraction_of_dft']:.1f} % of the {cost['dft_seconds_planned']:.0f} s that the "
              f"{max(plan['budgets'])} DFT labels of k = {max(plan['budgets'])} cost at "
              f"{cost['dft_label_seconds']:g} s each (the xTB labels alone: {100 * cost['label_fraction_of_dft']:.2f} %). "
              "Selection time is not counted: the label-free strategies make the same picks for the real run, so "
              "their selection is shared with it. Goal: ≤ 5 %.\n"]
    return lines


def plot_vs_measured(forecast_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_csv(forecast_csv) if r["measured"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, metric, unit in zip(axes, METRICS, ("meV/Å", "meV/atom")):
        sub = [r for r in rows if r["metric"] == metric]
        budgets = sorted({r["budget"] for r in sub})
        for system, marker in zip(SYSTEMS, "os"):
            for i, k in enumerate(budgets):
                at = [r for r in sub if r["budget"] == k and r["system"] == system]
                if not at:
                    continue
                m = np.array([r["measured"] for r in at])
                f = np.array([r["forecast"] for r in at])
                err = np.array([[r["forecast"] - r["lower"] for r in at], [r["upper"] - r["forecast"] for r in at]])
                ax.errorbar(m, f, yerr=err, fmt=marker, color=f"C{i}", ms=4, capsize=2, label=f"{system}, k={k}")
        if sub:
            lim = [min(min(r["measured"], r["lower"]) for r in sub) * 0.9, max(max(r["measured"], r["upper"]) for r in sub) * 1.1]
            ax.plot(lim, lim, "k-", lw=0.8)
            ax.fill_between(lim, [x * (1 - TOLERANCE) for x in lim], [x * (1 + TOLERANCE) for x in lim], color="k", alpha=0.07)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"measured {metric.replace('_', ' ')} ({unit})")
        ax.set_ylabel(f"forecast {metric.replace('_', ' ')} ({unit})")
        ax.legend(fontsize=8)
    fig.suptitle("Proxy-teacher forecast vs measured GAP error (ethanol: test_MD, 3BPA: test_300K; grey: ±25 %)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv, summary_only=(
        "rebuild forecast.csv, summary.md and forecast_vs_measured.png from the plan_<system>.json in --out and "
        "the committed measured results (tutorials 1 and 6), without forecasting again"))
    t0 = time.perf_counter()
    rows = []
    if args.summary_only:
        if args.smoke:
            raise SystemExit("--summary-only reads the full run's committed measured results: not with --smoke")
        for system in SYSTEMS:
            plan = json.loads((out / f"plan_{system}.json").read_text())
            rows += tidy(system, plan, measured_rows(out, system, {}, args.workers), TEST_SETS[system])
    for system in SYSTEMS if not args.summary_only else ():
        cfg, dft = plan_config(out, system, smoke=args.smoke, workers=args.workers)
        print(f"== {system}: forecast in {cfg.out}", flush=True)
        plan = run_plan(cfg, log=lambda m: print(m, flush=True), progress=not args.smoke)
        test_set = Path(dft["tests"][0]).stem if dft else TEST_SETS[system]
        measured = measured_rows(out, system, dft, args.workers)
        public = {k: v for k, v in plan.items() if k not in ("pool", "target")}  # no machine paths committed
        atomic_write_text(out / f"plan_{system}.json", json.dumps(public, indent=1) + "\n")
        plot_plan(plan, out / f"forecast_{system}.png", title=f"{system}: forecast on the GFN2-xTB proxy")
        rows += tidy(system, plan, measured, test_set)
    write_csv(out / "forecast.csv", rows)
    atomic_write_text(out / "summary.md", render_summary(out / "forecast.csv", out))
    plot_vs_measured(out / "forecast.csv", out / "forecast_vs_measured.png")
    print(f"tutorial 10 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
