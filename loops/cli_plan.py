"""``oed plan --proxy``: the proxy-teacher forecast of :mod:`loops.plan`, printed as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from oed.errors import InputError


def proxy_plan(pool: Path, *, budgets: list[int], strategies: list[str], proxy: str, train: Path | None,
               target: Path | None, target_error: float | None, out: Path | None, seeds: int, model: str,
               e0s: Path | None, dft_label_seconds: float, workers: int | None, as_json: bool,
               plot: Path | None, theory: bool = True) -> None:
    """Run (or resume) the forecast and report it; see ``oed plan --help``."""
    from loops.plan import PlanConfig, plot_plan, run_plan

    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    out = out if out is not None else Path(f"{Path(pool).stem}_plan")
    err = Console(stderr=True)
    config = PlanConfig(pool=Path(pool), out=out, strategies=tuple(strategies), budgets=tuple(budgets), proxy=proxy,
                        target=target, design_target=target, train=train, e0s_file=e0s, n_seeds=seeds, model=model,
                        target_error=target_error, dft_label_seconds=dft_label_seconds, workers=workers,
                        theory=theory)
    payload = run_plan(config, log=lambda m: err.print(m, highlight=False), progress=not as_json)
    if plot is not None:
        plot_plan(payload, plot)
    if as_json:
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    console = Console()
    cal = payload["calibration"]
    table = Table(title=f"forecast force MAE (meV/Å) [95 %] on {'the pool' if target is None else Path(target).name}, "
                        f"{proxy} proxy; calibration: {cal['source']}")
    table.add_column("strategy")
    for k in payload["budgets"]:
        table.add_column(f"k={k}", justify="right")
    if target_error is not None:
        table.add_column(f"budget to {target_error:g}", justify="right")
    for name, s in payload["strategies"].items():
        cells = [f"{m:.1f} [{lo:.1f}, {hi:.1f}]" for m, lo, hi in
                 zip(s.get("force_mae", []), s.get("force_mae_lower", []), s.get("force_mae_upper", []))]
        if target_error is not None:
            b = s.get("budget_to_target", {})
            cells.append("–" if b.get("budget") is None else
                         f"{b['budget']:.0f} [{b['lower'] or '–'}, {b['upper'] or '∞'}] {b['verdict']}")
        table.add_row(name, *cells)
    console.print(table)
    if "feasibility" in payload:
        f = payload["feasibility"]
        console.print(f"target {target_error:g} meV/Å: {f['verdict']}"
                      + (f" — fewest labels with {f['best_strategy']} (≈{f['budget']:.0f} of {f['pool_size']})"
                         if f.get("best_strategy") else ""))
    th = payload.get("theory", {})
    if "seed_set" in th:
        s = th["seed_set"]
        console.print(f"theory check (sparse-GP, leave-one-configuration-out on the {s['n']} seed configurations): "
                      f"DFT/proxy force-MAE ratio {s['force_mae_ratio']:.2f} against the calibration's "
                      f"{s['cv_force_mae_ratio']:.2f}")
    if th.get("random", {}).get("budgets"):
        r = th["random"]
        console.print("theory check, random picks (sparse-GP, no 2-body term): force MAE "
                      + ", ".join(f"k={k} {v:.1f}" for k, v in zip(r["budgets"], r["force_mae"])) + " meV/Å")
    c = payload["cost"]
    console.print(f"cost: {c['total_seconds']:.0f} s ({100 * c['fraction_of_dft']:.1f} % of the DFT labels of "
                  f"k = {max(payload['budgets'])} at {c['dft_label_seconds']:g} s each); results in {out}/plan.json")
    if plot is not None:
        console.print(f"plot written to {plot}")
