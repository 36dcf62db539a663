#!/usr/bin/env python
"""Tutorial 2 — does the offline forecast (`oed plan`) predict the measured learning curves?

`oed plan` forecasts, before any DFT, how a design's posterior variance falls with the budget
(Barzdajn & Race, MSMSE 33, 025011, 2025; docs/design.md §3). Here the forecast is put against
measurement: the one-shot designs of tutorial 1 (same strategies, seeds and candidates, so the
same picks) are scored label-free, and the forecasts are compared with the GAP errors tutorial 1
measured on test_MD.

Two forecasts of each design's first k picks, both over the test_MD geometries (no labels):

- ``forecast_force_rmse`` (meV/Å): in the GAP's own feature space — kernel features
  φ(A) = Σ_i k(q_i, Q_M) with energy and force rows (the GAP's SOAP settings and ζ, 200 sparse
  environments per species) — with the noise and prior scales calibrated on a small labelled
  seed set (the first 50 random picks of seed 0: 1400 labelled rows, more than the 600
  features, so the noise scale is identifiable) by maximising the evidence, as
  `oed plan --train` does;
- ``forecast_variance_soap`` (σ² units): the cheap proxy, summed SOAP with energy rows, λ = 1.

Reported: Spearman's rank correlation across strategies between forecast and measured force
RMSE at each budget, and the budget each strategy needs to reach target errors, forecast vs
measured (log–log interpolation).

Run::

    python tutorials/02_forecast_vs_measurement.py            # uses tutorial 1's committed results
    python tutorials/02_forecast_vs_measurement.py --smoke --out /tmp/t2   # runs tutorial 1's smoke first

Outputs in ``--out`` (default ``tutorials/outputs/02_forecast_vs_measurement/``): ``results.csv``,
``summary.md`` (rebuilt from results.csv alone by :func:`render_summary`), ``forecast_vs_measured.png``.
Picks come from tutorial 1's run directory when present, else they are recomputed (deterministic).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, also when imported by path
from _shared import ROOT, parse_args  # noqa: E402

from loops.strategies import candidates, eligible, select  # noqa: E402
from loops.report import curves, read_results, write_results  # noqa: E402
from oed.design import FeatureSpec, design_features, design_labels  # noqa: E402
from oed.forecast import calibrate, score_design  # noqa: E402
from oed.io import atomic_write_text, read_structures  # noqa: E402
from oed.plots import save_figure  # noqa: E402

DEFAULT_OUT = ROOT / "tutorials" / "outputs" / "02_forecast_vs_measurement"
T1_PATH = ROOT / "tutorials" / "01_strategies_ethanol.py"
TEST_SET = "test_MD"
#: Labelled seed set for calibration (configurations), and sparse environments per species of
#: the forecast's kernel features: 50 × 28 rows > 3 × 200 features (see calibrate's warning).
CALIBRATION_SIZE = 50
N_SPARSE = 200
#: Measured force RMSEs (meV/Å) whose budgets are compared.
TARGETS = (200.0, 150.0, 120.0)


def tutorial1():
    spec = importlib.util.spec_from_file_location("tutorial_01", T1_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _picks(config, strategy, seed: int, features: dict) -> list[int]:
    """Tutorial 1's picks for (strategy, seed): read from its run directory, else recomputed."""
    from loops.strategies import parse_strategy

    path = Path(config.out) / "selections" / strategy / f"seed{seed}.json"
    kmax = max(config.budgets)
    if path.exists():
        picks = json.loads(path.read_text())["selected"]
        if len(picks) >= kmax:
            return picks[:kmax]
    spec = parse_strategy(strategy, select_with=config.select_with, features=config.features)
    fspec = config.feature_spec(spec)
    if fspec not in features:
        features[fspec] = design_features(_bare_pool(config), fspec, cache_dir=Path(config.out) / "cache")[0]
    cand = candidates(eligible(_bare_pool(config)), seed, config.pool_fraction)
    return select(spec.name, kmax, features[fspec], cand, seed=seed, reg=config.reg)


_POOLS: dict = {}


def _bare_pool(config):
    """The pool exactly as tutorial 1's selectors saw it (bare copies, same feature cache keys)."""
    from loops.oracles import bare

    key = str(config.pool)
    if key not in _POOLS:
        _POOLS[key] = [bare(a, i) for i, a in enumerate(read_structures(config.pool, what="pool"))]
    return _POOLS[key]


def forecast_rows(config, measured: list[dict]) -> list[dict]:
    """Forecast rows for every one-shot (strategy, seed) of tutorial 1 that has measurements."""
    from loops.cells import load_test

    pool = _bare_pool(config)
    labelled = read_structures(config.pool, what="pool")
    tests = {Path(p).stem: p for p in config.tests}
    target = load_test(tests[TEST_SET], config.test_limit)
    gap = config.settings()
    kmax = max(config.budgets)
    n_cal, n_sparse = (CALIBRATION_SIZE, N_SPARSE) if kmax >= CALIBRATION_SIZE else (kmax, 20)  # smoke: tiny
    kernel = FeatureSpec(kind="gap-kernel", forces=True, r_cut=gap.cutoff, n_max=gap.n_max, l_max=gap.l_max,
                         sigma=gap.atom_sigma, zeta=gap.zeta, n_sparse=n_sparse)
    soap = FeatureSpec()
    cache = Path(config.out) / "cache"
    seed_set = _picks(config, "random", 0, {})[:n_cal]
    Xk, Xk_train, Xk_target = design_features(pool, kernel, train=[labelled[i] for i in seed_set],
                                              target=target, cache_dir=cache)
    cal = calibrate(Xk_train.rows, design_labels([labelled[i] for i in seed_set], kernel))
    print(f"calibrated on {len(seed_set)} labelled configurations: noise ×{cal.noise_scale:.3g}, "
          f"prior scale {cal.prior_scale:.3g}, λ = {cal.reg:.3g}", flush=True)
    force_rows = np.ones(len(Xk_target.rows), dtype=bool)
    force_rows[Xk_target.offsets[:-1]] = False
    Xs, _, Xs_target = design_features(pool, soap, target=target, cache_dir=cache)
    strategies = sorted({r["strategy"] for r in measured})
    seeds = sorted({r["seed"] for r in measured})
    budgets = sorted({r["budget"] for r in measured})
    rows, features = [], {}
    for strategy in strategies:
        for seed in seeds:
            picks = _picks(config, strategy, seed, features)
            fk = score_design(Xk, picks, budgets, X_target=Xk_target, reg=cal.reg, force_rows=force_rows,
                              sigma_force=kernel.sigma_force, calibration=cal)
            fs = score_design(Xs, picks, budgets, X_target=Xs_target, reg=1.0)
            for b, rmse, var in zip(budgets, fk.force_rmse, fs.variance):
                rows.append(dict(strategy=strategy, seed=seed, budget=b, test_set=TEST_SET,
                                 metric="forecast_force_rmse", value=rmse))
                rows.append(dict(strategy=strategy, seed=seed, budget=b, test_set=TEST_SET,
                                 metric="forecast_variance_soap", value=var))
        print(f"forecast {strategy}: done", flush=True)
    return rows


def _budget_at(budgets, errors, target: float) -> float | None:
    """Budget where a (monotone-made) log–log curve reaches ``target``; None outside its range."""
    b = np.asarray(budgets, dtype=float)
    e = np.minimum.accumulate(np.asarray(errors, dtype=float))
    if target > e[0] or target < e[-1]:
        return None
    for j in range(1, len(b)):
        if e[j] <= target:
            if e[j] == e[j - 1]:
                return float(b[j])
            t = (math.log(target) - math.log(e[j - 1])) / (math.log(e[j]) - math.log(e[j - 1]))
            return float(math.exp(math.log(b[j - 1]) + t * (math.log(b[j]) - math.log(b[j - 1]))))
    return float(b[0])


def render_summary(results_csv: str | Path) -> str:
    """summary.md, from results.csv alone."""
    from scipy.stats import spearmanr

    rows = read_results(results_csv)
    by_key = curves(rows)
    measured = by_key[(TEST_SET, "force_rmse")]
    fk = by_key[(TEST_SET, "forecast_force_rmse")]
    fs = by_key[(TEST_SET, "forecast_variance_soap")]
    strategies = sorted(set(measured) & set(fk))
    budgets = sorted({b for s in strategies for b in measured[s].budgets})
    seeds = len({r["seed"] for r in rows})
    lines = [
        "# Tutorial 2 — offline forecast against measured learning curves\n",
        f"The one-shot designs of tutorial 1 ({len(strategies)} strategies, {seeds} seed(s)) forecast "
        f"label-free over the {TEST_SET} geometries, against the GAP force RMSE measured on {TEST_SET}. "
        f"`forecast_force_rmse`: GAP kernel features with force rows, noise and prior scale calibrated on "
        f"the first {CALIBRATION_SIZE} random picks of seed 0 (meV/Å). `forecast_variance_soap`: summed-SOAP energy "
        "rows, λ = 1 (σ² units, only its ranking matters). Means over seeds; measured ± 95 % CI.\n",
        "## Forecast and measurement per budget\n",
    ]
    for b in budgets:
        lines.append(f"**k = {b}**\n")
        lines.append("| strategy | measured force RMSE (meV/Å) | forecast force RMSE (meV/Å) | "
                     "forecast / measured | summed-SOAP variance |")
        lines.append("|---|---:|---:|---:|---:|")
        for s in strategies:
            m, h = measured[s].interval(b)
            f = float(np.mean(list(fk[s].values[b].values())))
            v = float(np.mean(list(fs[s].values[b].values())))
            half = "" if math.isnan(h) else f" ± {h:.1f}"
            lines.append(f"| {s} | {m:.1f}{half} | {f:.1f} | {f / m:.2f} | {v:.4g} |")
        lines.append("")
    lines.append("## Rank correlation across strategies (Spearman ρ, forecast vs measured force RMSE)\n")
    lines.append("| budget | ρ, GAP-kernel forecast | ρ, summed-SOAP variance |")
    lines.append("|---:|---:|---:|")
    rhos = []
    for b in budgets:
        meas = [float(np.mean(list(measured[s].values[b].values()))) for s in strategies]
        fkv = [float(np.mean(list(fk[s].values[b].values()))) for s in strategies]
        fsv = [float(np.mean(list(fs[s].values[b].values()))) for s in strategies]
        r1, r2 = spearmanr(fkv, meas).statistic, spearmanr(fsv, meas).statistic
        rhos.append((r1, r2))
        lines.append(f"| {b} | {r1:+.2f} | {r2:+.2f} |")
    lines.append("")
    lines.append("## Budget to reach a force RMSE on test_MD: forecast vs measured\n")
    lines.append("| strategy | " + " | ".join(f"{t:g} meV/Å: forecast / measured" for t in TARGETS) + " |")
    lines.append("|---|" + "---:|" * len(TARGETS))
    ratios = []
    for s in strategies:
        cells = []
        for t in TARGETS:
            kf = _budget_at(fk[s].budgets, fk[s].mean(), t)
            km = _budget_at(measured[s].budgets, measured[s].mean(), t)
            if kf is None or km is None:
                cells.append(f"{'–' if kf is None else f'{kf:.0f}'} / {'–' if km is None else f'{km:.0f}'}")
            else:
                cells.append(f"{kf:.0f} / {km:.0f} ({kf / km:.2f}×)")
                ratios.append(kf / km)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("## In words\n")
    mean_rho_k = float(np.mean([r[0] for r in rhos]))
    mean_rho_s = float(np.mean([r[1] for r in rhos]))
    ratio_all = [float(np.mean(list(fk[s].values[b].values()))) / float(np.mean(list(measured[s].values[b].values())))
                 for s in strategies for b in budgets]
    lines.append(
        f"- Ranking strategies: mean Spearman ρ over budgets {mean_rho_k:+.2f} for the calibrated GAP-kernel "
        f"forecast and {mean_rho_s:+.2f} for the summed-SOAP variance (+1: the forecast orders the strategies "
        "as the measurement does).")
    lines.append(
        f"- Scale: forecast / measured force RMSE ranges {min(ratio_all):.2f}–{max(ratio_all):.2f} "
        f"(geometric mean {math.exp(np.mean(np.log(ratio_all))):.2f}); the forecast is a linear-model variance, "
        "the measurement a GAP error, so a constant factor between them is expected and calibration on a seed "
        "set sets it.")
    if ratios:
        lines.append(
            f"- Budget to target: forecast / measured budget {min(ratios):.2f}–{max(ratios):.2f} "
            f"(geometric mean {math.exp(np.mean(np.log(ratios))):.2f}) where both reach the target.")
    return "\n".join(lines).rstrip() + "\n"


def plot(results_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_results(results_csv)
    by_key = curves(rows)
    measured, fk = by_key[(TEST_SET, "force_rmse")], by_key[(TEST_SET, "forecast_force_rmse")]
    strategies = sorted(set(measured) & set(fk))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(strategies)}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
    lo, hi = math.inf, 0.0
    for s in strategies:
        m, f = measured[s].mean(), fk[s].mean()
        a1.plot(measured[s].budgets, m, "-o", ms=3.5, color=colours[s], label=s)
        a1.plot(fk[s].budgets, f, ":", color=colours[s], lw=1.4)
        halves = [measured[s].interval(b)[1] for b in measured[s].budgets]
        a2.errorbar(f, m, yerr=[h if np.isfinite(h) else 0 for h in halves], fmt="o", ms=4, color=colours[s],
                    capsize=2, label=s)
        lo, hi = min(lo, m.min(), f.min()), max(hi, m.max(), f.max())
    a1.set(xscale="log", yscale="log", xlabel="labelled configurations", ylabel="force RMSE on test_MD (meV/Å)",
           title="measured (solid) and forecast (dotted)")
    a1.grid(True, which="both", alpha=0.3)
    a2.plot([lo * 0.8, hi * 1.2], [lo * 0.8, hi * 1.2], "k--", lw=1, label="forecast = measured")
    a2.set(xscale="log", yscale="log", xlabel="forecast force RMSE (meV/Å)", ylabel="measured force RMSE (meV/Å)",
           title="one point per strategy and budget")
    a2.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    args, out = parse_args(__doc__, DEFAULT_OUT, argv)
    t1 = tutorial1()
    t0 = time.perf_counter()
    if args.smoke:
        t1_out = out / "tutorial1"
        if not (t1_out / "results.csv").exists():
            t1.main(["--smoke", "--out", str(t1_out)])
    else:
        t1_out = t1.DEFAULT_OUT
    config = t1.configs(t1_out, smoke=args.smoke, workers=None)[""]
    measured = [r for r in read_results(t1_out / "results.csv")
                if not r["strategy"].startswith(t1.SEQ) and r["test_set"] == TEST_SET
                and r["metric"] in ("force_rmse", "force_mae")]
    rows = measured + forecast_rows(config, measured)
    write_results(out / "results.csv", rows)
    atomic_write_text(out / "summary.md", render_summary(out / "results.csv"))
    plot(out / "results.csv", out / "forecast_vs_measured.png")
    print(f"tutorial 2 finished in {time.perf_counter() - t0:.0f} s → {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
