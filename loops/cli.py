"""The ``oed`` command line (in loops/: the one place that sees both :mod:`oed` and :mod:`loops`).

Each command only parses its options, calls one library function and prints;
errors oed raises on purpose become one red line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from oed.errors import OEDError

app = typer.Typer(
    help="Optimal experimental design and active learning for ML interatomic potentials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
loop_app = typer.Typer(help="Active-learning loops (select → label → fit → evaluate).", no_args_is_help=True)
app.add_typer(loop_app, name="loop")

out = Console()
err = Console(stderr=True)


def _clean_errors(fn):
    """Turn oed's own errors into one message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OEDError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


def _parse_workers(workers: Optional[int]) -> Optional[int]:
    if workers is not None and workers < 1:
        from oed.errors import InputError

        raise InputError(f"--workers must be >= 1, got {workers}")
    return workers


# Feature options shared by rank and plan.
FeaturesOpt = Annotated[str, typer.Option("--features", help="Information rows: energy, or energy + 3N forces.")]
DescriptorOpt = Annotated[str, typer.Option("--descriptor", help="Feature map: soap (summed SOAP) or gap-kernel.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="SOAP implementation: dscribe or quippy.")]
RegOpt = Annotated[float, typer.Option("--reg", help="Prior precision λ = 1/δ² (δ: prior atomic-energy scale, eV).")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Feature cache folder (default: none).")]


def _spec(features: str, descriptor: str, backend: str):
    from oed.design import FeatureSpec
    from oed.errors import InputError

    if features not in ("energy", "forces"):
        raise InputError(f"--features must be energy or forces, got {features!r}")
    spec = FeatureSpec(kind=descriptor, backend=backend, forces=features == "forces")
    spec.validate()
    return spec


@app.command()
@_clean_errors
def rank(
    pool: Annotated[Path, typer.Argument(help="Candidate configurations (extxyz).")],
    budget: Annotated[int, typer.Option("--budget", "-k", help="Number of configurations to pick.")],
    strategy: Annotated[str, typer.Option(help="Selection strategy (d-optimal, a-optimal, i-optimal, info-gain, fps, cur, kmeans, random).")] = "d-optimal",
    train: Annotated[Optional[Path], typer.Option(help="Configurations already labelled: picks add to them.")] = None,
    target: Annotated[Optional[Path], typer.Option(help="Target configurations (i-optimal, info-gain).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (random strategies).")] = 0,
    features: FeaturesOpt = "energy",
    descriptor: DescriptorOpt = "soap",
    backend: BackendOpt = "dscribe",
    reg: RegOpt = 1.0,
    cache_dir: CacheOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the picks, in pick order, as extxyz.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
) -> None:
    """Rank a pool of unlabelled configurations: which to label first.

    Design rows are SOAP-based features divided by the expected errors
    (σ_E = 1 meV/atom, σ_F = 20 meV/Å); gains are in the strategy's units
    (nats of information for d-optimal and random).
    """
    from oed.design import rank_pool
    from oed.errors import InputError
    from oed.io import read_structures, write_structures

    if budget < 1:
        raise InputError(f"--budget must be >= 1, got {budget}")
    spec = _spec(features, descriptor, backend)
    frames = read_structures(pool, what="pool")
    train_frames = read_structures(train, what="training set") if train else []
    target_frames = read_structures(target, what="target set") if target else []
    t0 = time.perf_counter()
    with err.status(f"{descriptor} features ({features}) and {strategy} selection over {len(frames)} configurations"):
        ranking = rank_pool(frames, budget, strategy=strategy, train=train_frames, target=target_frames,
                            seed=seed, reg=reg, spec=spec, cache_dir=cache_dir if cache_dir else False)
    seconds = time.perf_counter() - t0
    if output is not None:
        picked = []
        for r, (i, g) in enumerate(zip(ranking.selected, ranking.gains)):
            atoms = frames[int(i)].copy()
            atoms.calc = frames[int(i)].calc  # keep published labels, if any
            atoms.info.update(oed_rank=r, oed_pool_index=int(i), oed_gain=float(g))
            picked.append(atoms)
        write_structures(output, picked)
    if as_json:
        payload = {
            "strategy": strategy,
            "pool": str(pool),
            "budget": budget,
            "features": features,
            "descriptor": descriptor,
            "selected": [int(i) for i in ranking.selected],
            "gains": [float(g) for g in ranking.gains],
            "log_det": ranking.log_det,
            "seconds": round(seconds, 3),
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    table = Table(title=f"{strategy}: {len(ranking.selected)} of {len(frames)} configurations")
    table.add_column("rank", justify="right")
    table.add_column("pool index", justify="right")
    table.add_column("gain", justify="right")
    for r, (i, g) in enumerate(zip(ranking.selected, ranking.gains)):
        table.add_row(str(r + 1), str(int(i)), f"{g:.4g}")
    out.print(table)
    out.print(f"log det information = {ranking.log_det:.2f}   ({seconds:.1f} s)")
    if output is not None:
        out.print(f"picks written to {output}")


@app.command()
@_clean_errors
def plan(
    pool: Annotated[Path, typer.Argument(help="Candidate configurations (extxyz).")],
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets.")] = "10,20,50,100,200",
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = "d-optimal,i-optimal,random",
    train: Annotated[Optional[Path], typer.Option(help="Labelled configurations: condition on them and calibrate σ and prior scale.")] = None,
    target: Annotated[Optional[Path], typer.Option(help="Where the model will be used (default: the pool).")] = None,
    target_variance: Annotated[Optional[float], typer.Option(help="Report the smallest budget reaching this mean variance (σ² units).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    features: FeaturesOpt = "energy",
    descriptor: DescriptorOpt = "soap",
    backend: BackendOpt = "dscribe",
    reg: RegOpt = 1.0,
    cache_dir: CacheOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write the forecast plot (PNG).")] = None,
) -> None:
    """Forecast, before any DFT, how the model's uncertainty falls with the labelling budget.

    Per strategy and budget: the mean posterior predictive variance over the
    target (σ² units; rows are scaled by the expected errors), the effective
    dimension of the information matrix and, with a labelled --train set and
    --features forces, a forecast force RMSE in meV/Å (Barzdajn & Race 2025).
    """
    from oed.design import design_features, design_labels, train_energies
    from oed.errors import InputError
    from oed.forecast import calibrate, forecast
    from oed.io import read_structures

    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--budgets must be comma-separated integers, got {budgets!r}") from None
    names = [n.strip() for n in strategies.split(",") if n.strip()]
    if not names:
        raise InputError("--strategies is empty")
    spec = _spec(features, descriptor, backend)
    frames = read_structures(pool, what="pool")
    train_frames = read_structures(train, what="training set") if train else []
    target_frames = read_structures(target, what="target set") if target else []
    t0 = time.perf_counter()
    with err.status(f"{descriptor} features ({features}) of {len(frames)} configurations"):
        X, X_train, X_target = design_features(frames, spec, train=train_frames, target=target_frames,
                                               cache_dir=cache_dir if cache_dir else False)
    calibration, force_rows = None, None
    if train_frames:
        labels = design_labels(train_frames, spec)
        if labels is not None:
            calibration = calibrate(X_train.rows, labels)
            reg = calibration.reg
            err.print(f"calibrated on {calibration.n_rows} labelled rows: noise ×{calibration.noise_scale:.3g}, "
                      f"prior scale {calibration.prior_scale:.3g}, λ = {reg:.3g}", highlight=False)
    tgt = X if X_target is None else X_target
    if spec.forces:
        force_rows = np.ones(len(tgt.rows), dtype=bool)
        force_rows[tgt.offsets[:-1]] = False
    with err.status(f"forecasting {', '.join(names)} at budgets {', '.join(map(str, budget_list))}"):
        fc = forecast(X, budget_list, names, X_train=X_train, X_target=X_target,
                      y_train=train_energies(train_frames) if train_frames else None, reg=reg, seed=seed,
                      target_variance=target_variance, force_rows=force_rows, sigma_force=spec.sigma_force,
                      calibration=calibration)
    seconds = time.perf_counter() - t0
    if plot is not None:
        from oed.plots import plot_forecast

        plot_forecast(fc, plot, title=f"{Path(pool).name}: {descriptor} features, {features} rows")
    if as_json:
        payload = {
            "pool": str(pool),
            "target": str(target) if target else None,
            "features": features,
            "descriptor": descriptor,
            "reg": reg,
            "calibration": None if calibration is None else calibration.__dict__,
            "strategies": {
                name: {k: v for k, v in f.__dict__.items() if k != "selected" and v is not None}
                for name, f in fc.items()
            },
            "seconds": round(seconds, 2),
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    table = Table(title=f"forecast over {'the pool' if not target else Path(target).name}: mean predictive variance (σ²)")
    table.add_column("strategy")
    for b in sorted(set(budget_list)):
        table.add_column(f"k={b}", justify="right")
    table.add_column("d_eff at max k", justify="right")
    for name, f in fc.items():
        table.add_row(name, *[f"{v:.4g}" for v in f.variance], f"{f.effective_dimension[-1]:.1f}")
        if f.force_rmse is not None:
            table.add_row("  force RMSE meV/Å", *[f"{v:.1f}" for v in f.force_rmse], "")
    out.print(table)
    for name, f in fc.items():
        if target_variance is not None:
            out.print(f"{name}: smallest budget reaching variance {target_variance:g}: "
                      f"{f.budget_to_target if f.budget_to_target is not None else 'not within the budgets'}")
    out.print(f"({seconds:.1f} s)")
    if plot is not None:
        out.print(f"plot written to {plot}")


OracleOpt = Annotated[Optional[str], typer.Option(
    "--oracle", help="Where labels come from: pyscf:xc/basis, xtb:gfn2-xtb, or any ASE calculator as "
    "'ase:MODULE:CLASS' with optional JSON keyword arguments, e.g. "
    "'ase:ase.calculators.lj:LennardJones:{\"sigma\":1.0}'. Default: pyscf at --method.")]


def _oracle(spec: Optional[str], method: str, workers: Optional[int], client=None, **pyscf_settings):
    """The oracle of a command: ``spec`` if given, else PySCF at ``method`` with its settings."""
    from loops.oracles import PySCFOracle, make_oracle, parse_oracle
    from loops.parallel import Executor

    executor = Executor(workers=_parse_workers(workers), client=client)
    if spec is None or parse_oracle(spec)[0] == "pyscf":
        level = method if spec is None else parse_oracle(spec)[1][0]
        return PySCFOracle(level, executor=executor, **pyscf_settings)
    return make_oracle(spec, executor=executor)


@app.command()
@_clean_errors
def label(
    inp: Annotated[Path, typer.Argument(metavar="IN.xyz", help="Configurations to label (extxyz).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Labelled extxyz to write.")],
    method: Annotated[str, typer.Option(help="Level of theory, xc/basis (PySCF).")] = "pbe/def2-svp",
    oracle: OracleOpt = None,
    workers: Annotated[Optional[int], typer.Option(help="Parallel processes (default: one per core).")] = None,
    charge: Annotated[int, typer.Option(help="Total charge (PySCF).")] = 0,
    spin: Annotated[Optional[int], typer.Option(help="2S (PySCF; default: 0 or 1 by electron count).")] = None,
    density_fit: Annotated[bool, typer.Option("--density-fit/--no-density-fit", help="Density fitting (PySCF).")] = True,
) -> None:
    """Label configurations: writes REF_energy (eV) and REF_forces (eV/Å).

    PySCF at --method by default, or any --oracle (xTB, any ASE calculator). The output keeps
    the input order and info keys. A configuration whose calculation fails (an SCF that does
    not converge) gets no label: the command reports it and exits 1.
    """
    from oed.io import read_structures, write_structures

    frames = read_structures(inp, what="input file")
    source = _oracle(oracle, method, workers, charge=charge, spin=spin, density_fit=density_fit)
    t0 = time.perf_counter()
    results = source.label(frames)
    failed = [r for r in results if not r.ok]
    write_structures(output, [r.atoms for r in results if r.ok])
    err.print(f"labelled {len(results) - len(failed)} of {len(frames)} configurations with {source.name} "
              f"in {time.perf_counter() - t0:.1f} s → {output}")
    for r in failed:
        err.print(f"[red]configuration {r.index}: {r.error}[/]")
    if failed:
        raise typer.Exit(code=1)


@app.command()
@_clean_errors
def domain(
    train: Annotated[Path, typer.Argument(help="Training configurations (extxyz): the known domain.")],
    candidates: Annotated[list[Path], typer.Argument(help="Candidate configurations (one or more extxyz files).")],
    per_structure: Annotated[bool, typer.Option("--per-structure", help="Grade summed structure features instead of atoms.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write a γ plot (PNG) per candidate file.")] = None,
) -> None:
    """Extrapolation grade γ of candidates against a training set (MaxVol active set).

    γ ≤ 1 interpolates, γ > 1 extrapolates (Podryabinkin & Shapeev 2017;
    Lysogorskiy et al. 2023). A configuration's γ is the largest of its atoms'
    (per element). Typical action thresholds: warn at γ > 2, stop at γ > 10.
    """
    from oed.domain import GAMMA_STOP, GAMMA_WARN, ExtrapolationGrade, plot_gamma
    from oed.io import read_structures

    train_frames = read_structures(train, what="training set")
    sets = {Path(p).stem: read_structures(p, what="candidate file") for p in candidates}
    if len(sets) != len(candidates):
        from oed.errors import InputError

        raise InputError("candidate files must have distinct names")
    with err.status(f"MaxVol active set of {len(train_frames)} training configurations"):
        grader = ExtrapolationGrade(per_atom=not per_structure).fit(train_frames)
        gammas = {name: np.asarray(grader.transform(frames)) for name, frames in sets.items()}
    summary = {
        name: {
            "n": int(len(g)),
            "median": float(np.median(g)),
            "max": float(np.max(g)),
            "fraction_extrapolating": float(np.mean(g > 1.0)),
            "fraction_above_warn": float(np.mean(g > GAMMA_WARN)),
            "fraction_above_stop": float(np.mean(g > GAMMA_STOP)),
        }
        for name, g in gammas.items()
    }
    if plot is not None:
        plot_gamma(gammas, plot, title=f"extrapolation grade vs {Path(train).name}")
    if as_json:
        payload = {
            "train": str(train),
            "gamma": [_finite(x) for g in gammas.values() for x in g],
            "extrapolating": [bool(x > 1.0) for g in gammas.values() for x in g],
            "sets": {name: {**summary[name], "gamma": [_finite(x) for x in g]} for name, g in gammas.items()},
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    table = Table(title=f"extrapolation grade γ against {Path(train).name} ({len(train_frames)} configurations)")
    for col in ("candidates", "n", "median γ", "max γ", "γ > 1", f"γ > {GAMMA_WARN:g}", f"γ > {GAMMA_STOP:g}"):
        table.add_column(col, justify="left" if col == "candidates" else "right")
    for name, row in summary.items():
        table.add_row(name, str(row["n"]), f"{row['median']:.2f}", f"{row['max']:.2f}",
                      f"{100 * row['fraction_extrapolating']:.0f}%", f"{100 * row['fraction_above_warn']:.0f}%",
                      f"{100 * row['fraction_above_stop']:.0f}%")
    out.print(table)
    if plot is not None:
        out.print(f"plot written to {plot}")


def _finite(x: float):
    """JSON has no infinity: an element absent from training is reported as null."""
    return float(x) if np.isfinite(x) else None


def _results_table(results: list[dict], title: str) -> Table:
    """One row per round and test set: narrow enough for an 80-column terminal."""
    table = Table(title=title)
    for name, justify in (("round", "right"), ("labels", "right"), ("test set", "left"),
                          ("E-MAE\nmeV/atom", "right"), ("E-RMSE\nmeV/atom", "right"),
                          ("F-MAE\nmeV/Å", "right"), ("F-RMSE\nmeV/Å", "right")):
        table.add_column(name, justify=justify)

    def cell(e: dict, key: str, fmt: str) -> str:
        return format(e[key], fmt) if key in e else "–"

    for r in results:
        names = sorted(r["errors"])
        for j, name in enumerate(names):
            e = r["errors"][name]
            table.add_row(str(r["round"]) if j == 0 else "", str(r["n_labelled"]) if j == 0 else "", name,
                          cell(e, "energy_mae", ".2f"), cell(e, "energy_rmse", ".2f"),
                          cell(e, "force_mae", ".1f"), cell(e, "force_rmse", ".1f"),
                          end_section=j == len(names) - 1)
    return table


def _log(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)


def _run_loop(config, scheduler: Optional[str] = None) -> list[dict]:
    from loops.loop import run_loop

    from loops.parallel import dask_client

    t0 = time.perf_counter()
    with dask_client(scheduler) as client:
        results = run_loop(config, log=_log, client=client)
    out.print(_results_table(results, f"{config.strategy} @ {config.oracle_spec}: errors per round"))
    out.print(f"results: {Path(config.out) / 'results.json'}", soft_wrap=True)
    out.print(f"learning curve: {Path(config.out) / 'learning_curve.png'}", soft_wrap=True)
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return results


@loop_app.command("run")
@_clean_errors
def loop_run(
    pool: Annotated[Path, typer.Option(help="Candidate configurations (extxyz).")],
    test: Annotated[list[Path], typer.Option(help="Test file (repeat for several).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (rerun to resume).")],
    init: Annotated[int, typer.Option(help="Size of the initial design.")] = 10,
    batch: Annotated[int, typer.Option(help="Configurations picked per round.")] = 10,
    rounds: Annotated[int, typer.Option(help="Rounds after the initial design.")] = 3,
    strategy: Annotated[str, typer.Option(help="Selection strategy for the rounds.")] = "d-optimal",
    init_strategy: Annotated[Optional[str], typer.Option(help="Strategy of the initial design (default: --strategy).")] = None,
    method: Annotated[str, typer.Option(help="Level of theory, xc/basis (PySCF, the default oracle).")] = "pbe/def2-svp",
    oracle: Annotated[Optional[str], typer.Option(help="Labels from: pyscf:xc/basis, xtb:gfn2-xtb, 'ase:MODULE:CLASS[:JSON]', or pool (replay the pool's labels). Default: pyscf at --method.")] = None,
    model: Annotated[str, typer.Option(help="Model fitted each round: gap or mace.")] = "gap",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Labelling processes (default: one per core).")] = None,
    e0s: Annotated[Optional[Path], typer.Option(help="Isolated-atom energies (extxyz); default: computed by the oracle.")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="Evaluate at most N configurations per test file.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address: label on a Dask cluster.")] = None,
) -> None:
    """Run or resume an active-learning loop: select → label → fit → score, round after round.

    Labels come from PySCF at --method unless --oracle names another source; each is
    committed to DIR/labels.db the moment it exists, so rerunning the same command resumes
    (nothing is labelled twice) and a larger --rounds extends the run.
    """
    from loops.loop import LoopConfig

    config = LoopConfig(pool=pool, tests=tuple(test), out=out_dir, n_init=init, batch_size=batch,
                        n_rounds=rounds, strategy=strategy, init_strategy=init_strategy, method=method,
                        oracle=oracle, model=model, seed=seed, workers=_parse_workers(workers), e0s_file=e0s,
                        test_limit=test_limit)
    _run_loop(config, scheduler)


def _bundled(name: str) -> Path:
    """Absolute path of a bundled data file (package ``oed_data``, found with importlib.resources)."""
    try:
        import oed_data
    except ImportError:
        from oed.errors import InputError

        raise InputError("the bundled data (package oed_data) is not installed: reinstall oed "
                         "(pip install . or pip install -e .)") from None
    return oed_data.path(name)


@app.command()
@_clean_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("demo_run"),
    strategy: Annotated[str, typer.Option(help="Selection strategy.")] = "d-optimal",
) -> None:
    """Active learning on the bundled ethanol data at pbe/def2-svp (about 10 minutes on 2 cores).

    Pool: 1000 rMD17 ethanol configurations (their labels are ignored and
    recomputed with PySCF). Initial design of 20, then 4 rounds of 20
    picked with the information matrix conditioned on the labels so far; GAP refitted each round; errors on 200 configurations of test_MD (in
    distribution) and on the normal-mode and H-removal sets (out of distribution).
    The files are the installed bundled data (`oed data` lists them), so the demo runs from any directory.
    """
    from loops.loop import LoopConfig

    tests = tuple(_bundled(name) for name in (
        "ethanol/test_MD.xyz",
        "ethanol_pyscf/test_norm_mode_874.xyz",
        "ethanol_pyscf/test_norm_mode_3005.xyz",
        "ethanol/test_H_removal.xyz",
    ))
    config = LoopConfig(pool=_bundled("ethanol/train.xyz"), tests=tests, out=out_dir, n_init=20, batch_size=20,
                        n_rounds=4, strategy=strategy, method="pbe/def2-svp", seed=0, test_limit=200)
    _run_loop(config)


@app.command("data")
@_clean_errors
def data_(
    name: Annotated[Optional[str], typer.Argument(
        metavar="NAME", help="A bundled file or folder (ethanol/train.xyz, ethanol): print only its absolute path.")] = None,
) -> None:
    """List the bundled data (real configurations with published DFT labels), or print one file's path.

    Without NAME: every bundled file, what it is, and its absolute path in this installation.
    With NAME: only the absolute path, to use in other commands, e.g.

    oed rank "$(oed data ethanol/train.xyz)" --budget 10 --json

    Sources, citations and licence (MIT, BOTNet datasets of Kovács et al.): oed data README.md.
    """
    # Plain echo, not rich: a console would wrap a long path at 80 columns when piped.
    if name is not None:
        typer.echo(str(_bundled(name)))
        return
    typer.echo(f"Bundled data in {_bundled('.')}: energies in eV, forces in eV/Å.\n")
    import oed_data  # installed: _bundled checked it

    for rel, what in oed_data.CONTENTS.items():
        typer.echo(f"{rel}: {what}\n    {_bundled(rel)}")
    typer.echo('\nOne path only: oed data NAME, e.g. oed rank "$(oed data ethanol/train.xyz)" --budget 10')


def _csv_list(text: str, what: str, cast=str) -> tuple:
    from oed.errors import InputError

    try:
        items = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{what} must be a comma-separated list, got {text!r}") from None
    if not items:
        raise InputError(f"{what} is empty")
    return items


@app.command()
@_clean_errors
def compare(
    pool: Annotated[Path, typer.Option(help="Labelled candidate configurations (extxyz): the replay oracle.")],
    test: Annotated[list[Path], typer.Option(help="Test file (repeat for several): ID and OOD sets.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (rerun to resume or extend).")],
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies (selectors, or gap-variance in sequential mode).")] = "random,fps,cur,kmeans,d-optimal,i-optimal",
    budgets: Annotated[str, typer.Option(help="Comma-separated training-set sizes.")] = "25,50,100,200",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 … N−1).")] = 5,
    model: Annotated[str, typer.Option("--model", "--train-with", help="Model trained and scored: gap or mace.")] = "gap",
    select_with: Annotated[str, typer.Option(help="Selection feature space: soap, gap-kernel, or mace (sequential).")] = "soap",
    features: Annotated[str, typer.Option(help="Information rows: energy, or energy + 3N forces.")] = "energy",
    mode: Annotated[str, typer.Option(help="oneshot (rank once) or sequential (rounds with refits).")] = "oneshot",
    oracle: Annotated[str, typer.Option(help="pool (replay the pool's labels), or live: pyscf:xc/basis, xtb:gfn2-xtb, 'ase:MODULE:CLASS[:JSON]'.")] = "pool",
    pool_fraction: Annotated[float, typer.Option(help="Fraction of the pool each seed draws as candidates (shared by all strategies).")] = 0.8,
    target: Annotated[Optional[Path], typer.Option(help="Target configurations for i-optimal / info-gain (default: the candidates).")] = None,
    e0s: Annotated[Optional[Path], typer.Option(help="Isolated-atom energies (extxyz of single atoms).")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="Score at most N configurations per test file.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Parallel cells (default: one per core).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address: run cells on a Dask cluster.")] = None,
    keep_models: Annotated[bool, typer.Option("--keep-models", help="Keep every fitted model's files.")] = False,
) -> None:
    """Compare selection strategies: strategies × seeds × budgets, errors in and out of distribution.

    Writes results.csv (strategy, seed, budget, test_set, metric, value), summary.md (mean ± 95%
    CI, label efficiency against random and FPS, AULC) and learning_curve_<test set>.png.
    Finished cells are kept: a rerun only does what is missing.
    """
    from loops.compare import CompareConfig, run_compare

    config = CompareConfig(
        pool=pool, tests=tuple(test), out=out_dir, strategies=_csv_list(strategies, "--strategies"),
        budgets=_csv_list(budgets, "--budgets", int), n_seeds=seeds, model=model, select_with=select_with,
        features=features, mode=mode, oracle=oracle, pool_fraction=pool_fraction, target=target, e0s_file=e0s,
        test_limit=test_limit, workers=_parse_workers(workers), keep_models=keep_models,
    )
    from loops.parallel import dask_client

    t0 = time.perf_counter()
    with dask_client(scheduler) as client:
        run_compare(config, log=_log, client=client)
    from rich.markdown import Markdown

    out.print(Markdown((Path(out_dir) / "summary.md").read_text()))
    out.print(f"results: {Path(out_dir) / 'results.csv'}", soft_wrap=True)
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
