"""A labelling-budget forecast that sees the task: each strategy's learning curve simulated on a proxy teacher.

A label-free posterior variance is the very quantity the information-based designs minimise, so
it certifies them and ranks strategies backwards (tutorial 2: Spearman ρ −0.67 against the
measured GAP error; Canatar, Bordelon & Pehlevan, Nat. Commun. 12, 2914 (2021) on why the
target function's alignment with the kernel matters). Here the target function is seen through a
cheap *proxy teacher* instead:

1. the pool (and the target set) are labelled with a cheap method — GFN2-xTB by default, about
   1 % of a PBE/def2-SVP label (:mod:`loops.cheap`, stored in ``proxy_labels.db``, never mixed
   with DFT labels);
2. every strategy is run on that proxy-labelled pool exactly as ``oed compare`` runs it on DFT
   labels — same model, settings, seeds, candidates and therefore the same picks for the
   label-free strategies — and scored on the proxy-labelled target: proxy learning curves;
3. the curves are moved to the DFT level by a ratio calibrated on a small DFT-labelled seed set
   (``--train``): K-fold cross-validation errors of the same model fitted on the seed set's DFT
   labels and on its proxy labels (same configurations, same folds), r = DFT error / proxy error
   (geometric mean over folds, with a Student-t interval of the log ratios);
4. a power law e(k) = a·k^(−b) fitted to each forecast curve (log–log least squares) gives the
   budget to reach a target error, by interpolation inside the simulated budgets and by
   extrapolation beyond them — each number says which.

Without ``--train`` the curves stay at the proxy's level of theory (calibration ``"none"``).
The forecast's cost — proxy labels, simulated fits, calibration fits — is reported in seconds
and as a fraction of the DFT labels it plans (largest budget × seconds per DFT label).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from oed.errors import InputError
from oed.io import REF_ENERGY, atomic_write_text, read_structures, write_structures

Log = Callable[[str], None]

__all__ = ["PlanConfig", "calibration_ratio", "fit_power_law", "budget_to_reach", "run_plan", "plot_plan"]

PROXY_DB = "proxy_labels.db"
METRICS = ("force_mae", "energy_mae")


@dataclass(frozen=True)
class PlanConfig:
    """Settings of one proxy-teacher forecast (``oed plan --proxy``).

    Parameters
    ----------
    pool : Path
        Candidate configurations (extxyz); their labels, if any, are never read.
    out : Path
        Forecast directory: proxy labels, simulated runs and ``plan.json`` (a rerun reuses them).
    strategies : tuple of str
        As ``oed compare`` takes them (``name`` or ``name@space``).
    budgets : tuple of int
        Training-set sizes to forecast.
    proxy : str
        Cheap oracle (:func:`loops.oracles.make_oracle`), default ``"xtb:gfn2-xtb"``.
    target : Path or None
        Where the model will be used (unlabelled is fine; default: the pool, in-sample).
    train : Path or None
        DFT-labelled seed set (energies in eV, forces in eV/Å) for the calibration; ≥ 4
        configurations with forces. ``None``: no calibration, curves at the proxy level.
    e0s_file : Path or None
        DFT isolated-atom energies for the calibration fits (default: fitted to each fold).
    n_seeds : int
        Seeds of the simulated runs.
    model, model_settings
        The model the user will train (``loops.models``) and its settings.
    pool_fraction : float
        Candidates drawn per seed, as ``oed compare``.
    design_target : Path or None
        Target set of the target-aware designs (``i-optimal``, ``info-gain``), as ``oed compare
        --target`` (default: the candidates).
    target_limit : int or None
        Score on at most this many target configurations (evenly spaced), labelled by the proxy.
    target_error : float or None
        Force MAE to reach (meV/Å): the forecast budget per strategy and a feasibility verdict.
    folds : int
        Cross-validation folds of the calibration.
    dft_label_seconds : float
        Wall seconds of one DFT label, to express the forecast's cost (default 8 s: PBE/def2-SVP of
        one ethanol on 2 cores, docs/design.md §6).
    workers : int or None
        Parallel fits and labels (default: one per core).
    theory : bool
        Add the closed-form sparse-GP check (:mod:`loops.plan_theory`; GAP only): ``theory`` in
        the result, never mixed into the forecast curves.
    """

    pool: Path
    out: Path
    strategies: tuple[str, ...] = ("random", "fps", "kmeans", "d-optimal")
    budgets: tuple[int, ...] = (25, 50, 100, 200)
    proxy: str = "xtb:gfn2-xtb"
    target: Path | None = None
    train: Path | None = None
    e0s_file: Path | None = None
    n_seeds: int = 2
    model: str = "gap"
    model_settings: Any = None
    pool_fraction: float = 0.8
    design_target: Path | None = None
    target_limit: int | None = 200
    target_error: float | None = None
    folds: int = 5
    dft_label_seconds: float = 8.0
    workers: int | None = None
    theory: bool = True

    def validate(self) -> None:
        """Raises InputError on settings that cannot work (before any label)."""
        from loops.oracles import parse_oracle

        if self.proxy == "pool":
            raise InputError("--proxy must compute labels (e.g. xtb:gfn2-xtb), not replay the pool's")
        parse_oracle(self.proxy)
        if self.target_error is not None and not self.target_error > 0:
            raise InputError(f"--target-error must be > 0 meV/Å, got {self.target_error}")
        if self.folds < 2:
            raise InputError(f"folds must be >= 2, got {self.folds}")
        if not self.dft_label_seconds > 0:
            raise InputError(f"--dft-label-seconds must be > 0, got {self.dft_label_seconds}")
        if self.target_limit is not None and self.target_limit < 1:
            raise InputError(f"target_limit must be >= 1, got {self.target_limit}")


# -- pure pieces ---------------------------------------------------------------------------------------
def calibration_ratio(dft_errors: Sequence[float], proxy_errors: Sequence[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio DFT/proxy error over folds, with a 95 % Student-t interval.

    Parameters
    ----------
    dft_errors, proxy_errors : sequence of float, same length n ≥ 1, all > 0
        Per-fold errors of the model fitted on DFT and on proxy labels of the same configurations.

    Returns
    -------
    (ratio, lower, upper)
        exp(mean log r) and exp(mean ± t·s/√n); lower = upper = ratio for n = 1.

    Raises
    ------
    InputError
        Lengths differ, or an error is not positive and finite.
    """
    from scipy.stats import t as student_t

    d, p = np.asarray(dft_errors, dtype=float), np.asarray(proxy_errors, dtype=float)
    if d.shape != p.shape or d.size == 0:
        raise InputError("calibration needs the same folds for DFT and proxy errors")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(p)) and np.all(d > 0) and np.all(p > 0)):
        raise InputError("calibration errors must be positive and finite")
    logs = np.log(d / p)
    mean = float(logs.mean())
    if logs.size < 2:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    half = float(student_t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def fit_power_law(budgets: Sequence[float], errors: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of log e = log a − b log k; returns ``(a, b)`` (b > 0: errors fall).

    Raises
    ------
    InputError
        Fewer than two budgets, or a non-positive error.
    """
    k, e = np.asarray(budgets, dtype=float), np.asarray(errors, dtype=float)
    if k.size < 2 or np.any(e <= 0) or np.any(k <= 0):
        raise InputError("a power law needs at least two budgets with positive errors")
    slope, intercept = np.polyfit(np.log(k), np.log(e), 1)
    return float(math.exp(intercept)), float(-slope)


def budget_to_reach(budgets: Sequence[float], errors: Sequence[float], target: float) -> tuple[float, str]:
    """Labels needed to reach ``target`` on a learning curve.

    Inside the simulated budgets: log–log interpolation between the bracketing points
    (``"interpolated"``); beyond them: the power law of :func:`fit_power_law`
    (``"power-law extrapolation"``); already met at the smallest budget: that budget or less
    (``"at or below the smallest budget"``). ``inf`` when the curve does not fall.
    """
    k, e = np.asarray(budgets, dtype=float), np.asarray(errors, dtype=float)
    order = np.argsort(k)
    k, e = k[order], e[order]
    if e[0] <= target:
        a, b = fit_power_law(k, e)
        guess = (a / target) ** (1 / b) if b > 0 else k[0]
        return float(min(k[0], guess)), "at or below the smallest budget"
    for i in range(len(k) - 1):
        if e[i] > target >= e[i + 1]:
            t = (math.log(e[i]) - math.log(target)) / (math.log(e[i]) - math.log(e[i + 1]))
            return float(math.exp(math.log(k[i]) + t * (math.log(k[i + 1]) - math.log(k[i])))), "interpolated"
    a, b = fit_power_law(k, e)
    if b <= 0:
        return math.inf, "power-law extrapolation"
    return float((a / target) ** (1 / b)), "power-law extrapolation"


def _combine(values: Sequence[float], ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    """Forecast, lower, upper of one cell: r × mean over seeds, with the seeds' spread (log scale,
    Student-t) and the calibration's interval added in quadrature."""
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=float)
    r, r_lo, r_hi = ratio
    half_seed = 0.0
    if v.size > 1:
        logs = np.log(v)
        half_seed = float(student_t.ppf(0.975, v.size - 1) * logs.std(ddof=1) / math.sqrt(v.size))
    half_ratio = (math.log(r_hi) - math.log(r_lo)) / 2
    half = math.hypot(half_seed, half_ratio)
    mean = r * float(v.mean())
    return mean, mean * math.exp(-half), mean * math.exp(half)


def forecast_curves(proxy: dict[str, dict[str, dict[int, list[float]]]], budgets: Sequence[int],
                    ratios: dict[str, tuple[float, float, float]], target_error: float | None,
                    pool_size: int) -> dict[str, dict]:
    """Per strategy: forecast curves with bounds, power laws and the budget to ``target_error``.

    Parameters
    ----------
    proxy : {strategy: {metric: {budget: [value per seed]}}}
        Proxy-level errors (meV/Å, meV/atom).
    ratios : {metric: (ratio, lower, upper)}
        DFT/proxy calibration per metric ((1, 1, 1): none).
    pool_size : int
        Configurations available; a budget beyond it is not feasible.
    """
    out: dict[str, dict] = {}
    for name, per_metric in proxy.items():
        entry: dict[str, Any] = {"source": "proxy simulation, calibrated"}
        for metric in METRICS:
            cells = per_metric.get(metric, {})
            ks = [k for k in budgets if cells.get(k)]
            if not ks:
                continue
            trio = [_combine(cells[k], ratios[metric]) for k in ks]
            entry[metric] = [t[0] for t in trio]
            entry[f"{metric}_lower"] = [t[1] for t in trio]
            entry[f"{metric}_upper"] = [t[2] for t in trio]
            entry[f"proxy_{metric}"] = [float(np.mean(cells[k])) for k in ks]
            if len(ks) >= 2:
                a, b = fit_power_law(ks, entry[metric])
                entry.setdefault("power_law", {})[metric] = {"prefactor": a, "exponent": b}
        if target_error is not None and "force_mae" in entry:
            ks = [k for k in budgets if per_metric.get("force_mae", {}).get(k)]
            mean = np.asarray(entry["force_mae"])
            k_mid, source = budget_to_reach(ks, mean, target_error)
            # The band's relative width (median over budgets) moved along the mean curve: bounds that
            # keep the curve's shape, so the optimistic one always reaches the target first.
            half = float(np.median(np.log(np.asarray(entry["force_mae_upper"]) / mean)))
            k_lo, _ = budget_to_reach(ks, mean * math.exp(-half), target_error)
            k_hi, _ = budget_to_reach(ks, mean * math.exp(half), target_error)
            verdict = ("feasible" if k_hi <= pool_size else "uncertain" if k_lo <= pool_size
                       else "not within the pool")
            entry["budget_to_target"] = {"budget": _finite(k_mid), "lower": _finite(k_lo), "upper": _finite(k_hi),
                                         "source": source, "verdict": verdict}
        out[name] = entry
    return out


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 1)


def feasibility(strategies: dict[str, dict], target_error: float, pool_size: int) -> dict:
    """The pool's verdict: the strategy forecast to reach ``target_error`` with the fewest labels."""
    reach = [(v["budget_to_target"]["budget"], k) for k, v in strategies.items()
             if v.get("budget_to_target", {}).get("budget") is not None]
    if not reach:
        return {"verdict": "not within the pool", "best_strategy": None, "pool_size": pool_size,
                "target_error": target_error}
    budget, best = min(reach)
    return {"verdict": strategies[best]["budget_to_target"]["verdict"], "best_strategy": best, "budget": budget,
            "pool_size": pool_size, "target_error": target_error}


# -- the world: proxy labels, simulated runs, calibration fits -------------------------------------------
def _proxy_labelled(frames: Sequence[Atoms], cheap) -> list[Atoms | None]:
    from loops.oracles import _with_label, bare

    energies, forces = cheap.energies_forces(range(len(frames)))
    return [None if f is None else _with_label(bare(a), e, f, cheap.name)
            for a, e, f in zip(frames, energies, forces)]


def _failed_at_proxy(atoms: Atoms, proxy: str) -> Atoms:
    from loops.oracles import LABEL_FAILED, bare

    out = bare(atoms)
    out.info[LABEL_FAILED] = f"no {proxy} label"
    return out


class _LabelWall:
    """Wall seconds of the proxy labellings that computed something, kept in a JSON file.

    A rerun finds the labels cached and adds nothing; a resumed run adds what it computed.
    """

    def __init__(self, path: Path) -> None:
        from loops.rundir import read_json

        self.path = path
        self.known: dict[str, float] = read_json(path, {})

    def add(self, name: str, seconds: float) -> None:
        self.known[name] = round(self.known.get(name, 0.0) + seconds, 2)
        atomic_write_text(self.path, json.dumps(self.known, indent=1))

    def seconds(self) -> float:
        return float(sum(self.known.values()))


def _write_e0s(path: Path, e0s: dict[str, float]) -> None:
    atoms = []
    for symbol, energy in e0s.items():
        a = Atoms(symbol)
        a.info[REF_ENERGY] = float(energy)
        a.info["config_type"] = "IsolatedAtom"
        atoms.append(a)
    write_structures(path, atoms)


def _check_seed_set(train: Sequence[Atoms], folds: int) -> None:
    from oed.io import reference_energy, reference_forces

    missing = [i for i, a in enumerate(train) if reference_forces(a) is None or reference_energy(a) is None]
    if missing:
        raise InputError(f"--train configurations {missing[:5]} have no reference energy and forces: the "
                         "calibration needs DFT labels")
    if len(train) < max(4, folds):
        raise InputError(f"--train has {len(train)} configurations; the calibration needs at least {max(4, folds)}")


def _cv_errors(frames: Sequence[Atoms], e0s, config: PlanConfig, workdir: Path) -> list[dict]:
    """K-fold errors (energy_mae, force_mae) of the model fitted on ``frames``' labels."""
    from loops.evaluate import evaluate
    from loops.fitting import remove_fit_dir
    from loops.models import make_model

    folds = np.array_split(np.random.default_rng(0).permutation(len(frames)), config.folds)
    errors = []
    for f, held in enumerate(folds):
        keep = sorted(set(range(len(frames))) - set(held.tolist()))
        model = make_model(config.model, config.model_settings, seed=0)
        wd = workdir / f"fold{f}"
        model.fit([frames[i] for i in keep], e0s=e0s, workdir=wd)
        errors.append(evaluate(model, [frames[i] for i in held]))
        remove_fit_dir(wd)
    return errors


def _calibrate(train, train_px, proxy_e0s, config: PlanConfig, out: Path, log: Log) -> dict:
    """Cached per (seed set, proxy, model settings): the per-fold errors on both levels and the ratios."""
    from loops.oracles import e0s_from_file
    from loops.rundir import read_json
    from loops.settings import fingerprint_fields
    from oed.io import pool_hash

    ok = [i for i, a in enumerate(train_px) if a is not None]
    key = {"train": pool_hash([train[i] for i in ok]), "proxy": config.proxy, "model": config.model,
           "settings": fingerprint_fields(config.model_settings or _settings(config)), "folds": config.folds,
           "e0s": None if config.e0s_file is None else str(config.e0s_file)}
    cache = out / "calibration.json"
    known = read_json(cache, {})
    if known.get("key") != key:
        t0 = time.perf_counter()
        species = sorted({s for a in train for s in a.get_chemical_symbols()})
        dft_e0s = e0s_from_file(Path(config.e0s_file), species) if config.e0s_file else None
        log(f"calibration: {config.folds}-fold fits on {len(ok)} DFT-labelled configurations and on their proxy labels")
        dft = _cv_errors([train[i] for i in ok], dft_e0s, config, out / "calibration_fits" / "dft")
        prx = _cv_errors([train_px[i] for i in ok], proxy_e0s, config, out / "calibration_fits" / "proxy")
        known = {"key": key, "dft": dft, "proxy": prx, "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_text(cache, json.dumps(known, indent=1))
    ratios = {}
    for metric in METRICS:
        d = [e[metric] for e in known["dft"] if metric in e]
        p = [e[metric] for e in known["proxy"] if metric in e]
        ratios[metric] = calibration_ratio(d, p) if d and len(d) == len(p) else (1.0, 1.0, 1.0)
    return {"source": f"{config.folds}-fold cross-validation on {len(ok)} DFT-labelled configurations",
            "n_labelled": len(ok), "seconds": known["seconds"],
            **{f"{m}_ratio": {"ratio": r[0], "lower": r[1], "upper": r[2]} for m, r in ratios.items()},
            "folds": {"dft": known["dft"], "proxy": known["proxy"]}}, ratios


def _settings(config: PlanConfig):
    from loops.models import model_class

    return model_class(config.model).settings_class()


def _simulated_seconds(run_dir: Path) -> float:
    total = 0.0
    for path in (run_dir / "cells").rglob("k*.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        total += float(rec.get("fit_seconds", 0.0)) + float(rec.get("score_seconds", 0.0))
    return total


def run_plan(config: PlanConfig, *, log: Log = print, progress: bool = True) -> dict:
    """Forecast each strategy's error curve on the proxy teacher (see the module docstring).

    Returns
    -------
    dict
        ``budgets``; ``strategies.<name>`` with ``force_mae`` (meV/Å) and ``energy_mae``
        (meV/atom), one per budget, each with ``_lower``/``_upper`` (95 %), the proxy-level
        curves, ``power_law`` and, with a target error, ``budget_to_target``; ``calibration``;
        ``feasibility`` (with a target error); ``cost`` (seconds, and as a fraction of the DFT
        labels planned). Also written to ``out/plan.json``.

    Raises
    ------
    InputError
        Bad settings or files (before any label is computed); a seed set without DFT labels.
    RunMismatchError
        ``out`` holds a forecast with other settings (from the simulated comparison).
    """
    from loops.cells import subsample
    from loops.cheap import CheapLabels
    from loops.compare import CompareConfig, run_compare
    from loops.oracles import bare, make_oracle
    from loops.parallel import Executor
    from loops.rundir import check_run_dir, run_lock

    config.validate()
    out = check_run_dir(Path(config.out))
    t_start = time.perf_counter()
    pool = read_structures(config.pool, what="pool")
    target = subsample(read_structures(config.target, what="target set") if config.target else pool,
                       config.target_limit)
    train = read_structures(config.train, what="seed set (--train)") if config.train else []
    if train:
        _check_seed_set(train, config.folds)
    if max(config.budgets) > len(pool):
        raise InputError(f"largest budget {max(config.budgets)} exceeds the pool's {len(pool)} configurations")
    species = sorted({s for a in pool for s in a.get_chemical_symbols()})
    with run_lock(out):
        executor = Executor(workers=config.workers, progress=progress, threads=1)
        labelled = {}
        wall = _LabelWall(out / "proxy_label_wall.json")
        for name, frames in (("pool", pool), ("target", target), ("seed set", train)):
            if frames:
                log(f"proxy labels ({config.proxy}) of the {name}: {len(frames)} configurations")
                t0 = time.perf_counter()
                cheap = CheapLabels([bare(a) for a in frames], out / PROXY_DB, oracle=config.proxy, executor=executor)
                labelled[name] = _proxy_labelled(frames, cheap)
                if cheap.n_computed_:
                    wall.add(name, time.perf_counter() - t0)
        label_cost = cheap.cost()  # the store holds every proxy label of this forecast
        # A pool configuration the proxy cannot label stays in the simulated pool, marked, so the
        # pool keeps its indices: the seeded candidate draws and label-free picks then match the
        # DFT run's one for one, and a simulated pick of it is a recorded failure (as it would be).
        pool_px = [a if a is not None else _failed_at_proxy(p, config.proxy) for a, p in zip(labelled["pool"], pool)]
        target_px = [a for a in labelled["target"] if a is not None]
        n_failed = sum(a is None for a in labelled["pool"])
        if n_failed:
            log(f"{n_failed} pool configurations have no proxy label: a simulated pick of one is a failed label")
        if n_failed == len(pool):
            raise InputError("the proxy could label no pool configuration")
        if not target_px:
            raise InputError("the proxy could label no target configuration")
        write_structures(out / "proxy_pool.xyz", pool_px)
        write_structures(out / "proxy_target.xyz", target_px)
        proxy_e0s = make_oracle(config.proxy).e0s(species)
        _write_e0s(out / "proxy_e0s.xyz", proxy_e0s)
        sim = CompareConfig(pool=out / "proxy_pool.xyz", tests=(out / "proxy_target.xyz",), out=out / "simulated",
                            strategies=tuple(config.strategies), budgets=tuple(config.budgets),
                            n_seeds=config.n_seeds, model=config.model, model_settings=config.model_settings,
                            pool_fraction=config.pool_fraction, e0s_file=out / "proxy_e0s.xyz",
                            target=config.design_target,
                            workers=config.workers)
        log(f"simulating {len(config.strategies)} strategies × {config.n_seeds} seed(s) × budgets "
            f"{', '.join(map(str, sorted(config.budgets)))} on the proxy labels")
        rows = run_compare(sim, log=log, progress=progress)
        proxy: dict[str, dict[str, dict[int, list[float]]]] = {}
        for r in rows:
            if r["test_set"] == "proxy_target" and r["metric"] in METRICS:
                proxy.setdefault(r["strategy"], {}).setdefault(r["metric"], {}).setdefault(int(r["budget"]), []).append(
                    float(r["value"]))
        calibration: dict[str, Any] = {"source": "none: errors at the proxy's level of theory"}
        ratios = {m: (1.0, 1.0, 1.0) for m in METRICS}
        if train:
            seed_px = labelled["seed set"]
            calibration, ratios = _calibrate(train, seed_px, proxy_e0s, config, out, log)
        budgets = sorted(int(b) for b in config.budgets)
        strategies = forecast_curves(proxy, budgets, ratios, config.target_error, len(pool) - n_failed)
        from loops.plan_theory import cached_check

        theory = cached_check(config, train, labelled.get("seed set", []), pool_px, budgets, ratios, out, log)
        sim_seconds = _simulated_seconds(out / "simulated")
        cal_seconds = float(calibration.get("seconds", 0.0))
        # the labeller's per-label seconds leave out process start-up and parallel overhead: the
        # total charges the wall time of the first (uncached) labelling when it is the larger
        label_seconds = max(label_cost.seconds, wall.seconds())
        theory_seconds = float(theory.get("seconds", 0.0)) if theory else 0.0
        total = label_seconds + sim_seconds + cal_seconds + theory_seconds
        planned = max(budgets) * config.dft_label_seconds
        payload = {
            "pool": str(config.pool), "target": str(config.target) if config.target else None,
            "proxy": config.proxy, "model": config.model, "n_seeds": config.n_seeds,
            "units": {"force_mae": "meV/Å", "energy_mae": "meV/atom"},
            "budgets": budgets,
            "strategies": {k: strategies[k] for k in sorted(strategies)},
            "calibration": calibration,
            "cost": {"proxy_labels": label_cost.n_labels, "proxy_label_seconds": round(label_cost.seconds, 2),
                     "proxy_label_wall_seconds": round(wall.seconds(), 2), "proxy_labels_failed": n_failed,
                     "simulated_fit_seconds": round(sim_seconds, 2), "calibration_seconds": round(cal_seconds, 2),
                     "theory_seconds": round(theory_seconds, 2),
                     "total_seconds": round(total, 2), "dft_label_seconds": config.dft_label_seconds,
                     "dft_seconds_planned": planned, "fraction_of_dft": round(total / planned, 4),
                     "label_fraction_of_dft": round(label_seconds / planned, 4)},
            "wall_seconds": round(time.perf_counter() - t_start, 2),
        }
        if theory:
            payload["theory"] = theory
        if config.target_error is not None:
            payload["target_error"] = config.target_error
            payload["feasibility"] = feasibility(strategies, config.target_error, len(pool) - n_failed)
        atomic_write_text(out / "plan.json", json.dumps(payload, indent=1))
        return payload


def plot_plan(payload: dict, path: str | Path, *, title: str | None = None) -> Path:
    """Forecast force and energy MAE against budget (log–log), a 95 % band per strategy; the target
    error and each strategy's extrapolated power law to it as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from oed.plots import save_figure

    budgets = payload["budgets"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, unit in zip(axes, METRICS, ("meV/Å", "meV/atom")):
        for i, (name, s) in enumerate(payload["strategies"].items()):
            if metric not in s:
                continue
            ks = budgets[: len(s[metric])]
            color = f"C{i % 10}"
            ax.plot(ks, s[metric], "o-", color=color, label=name)
            ax.fill_between(ks, s[f"{metric}_lower"], s[f"{metric}_upper"], color=color, alpha=0.1)
            reach = s.get("budget_to_target", {})
            if metric == "force_mae" and reach.get("budget") and reach["budget"] > ks[-1]:
                law = s["power_law"][metric]
                kk = np.geomspace(ks[-1], reach["budget"], 20)
                ax.plot(kk, law["prefactor"] * kk ** -law["exponent"], "--", color=color, lw=1)
            if metric == "force_mae" and reach.get("budget") and math.isfinite(reach["budget"]):
                ax.plot([reach["budget"]], [payload["target_error"]], "|", color=color, ms=14, mew=2)
        if metric == "force_mae" and payload.get("target_error"):
            ax.axhline(payload["target_error"], color="k", ls=":", lw=1, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # plain numbers on both log axes: a chemist reads "50 labels, 60 meV/Å", not 6×10¹
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(budgets)
        reach_note = "; | where the forecast reaches the target" if metric == "force_mae" and payload.get("target_error") else ""
        ax.set_xlabel(f"DFT labels (budget){reach_note}")
        ax.set_ylabel(f"forecast {metric.replace('_', ' ')} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"forecast on the {payload['proxy']} proxy ({payload['calibration']['source']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
