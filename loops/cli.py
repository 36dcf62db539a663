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

from loops.rundir import check_output_file
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
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _parse_workers(workers: Optional[int]) -> Optional[int]:
    if workers is not None and workers < 1:
        from oed.errors import InputError

        raise InputError(f"--workers must be >= 1, got {workers}")
    return workers


ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")]

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
    strategy: Annotated[str, typer.Option(help="Selection strategy (d-optimal, a-optimal, i-optimal, info-gain, lcmd, kmeans++, fps, cur, kmeans, random; ggfps with --force-norms).")] = "d-optimal",
    train: Annotated[Optional[Path], typer.Option(help="Configurations already labelled: picks add to them.")] = None,
    target: Annotated[Optional[Path], typer.Option(help="Target configurations (i-optimal, info-gain).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (random strategies).")] = 0,
    features: FeaturesOpt = "energy",
    descriptor: DescriptorOpt = "soap",
    backend: BackendOpt = "dscribe",
    reg: RegOpt = 1.0,
    cache_dir: CacheOpt = None,
    force_norms: Annotated[Optional[Path], typer.Option("--force-norms", help="ggfps: a .npy file of one force norm ||F|| (eV/Å) per pool configuration, e.g. from GFN2-xTB.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the picks, in pick order, as extxyz.")] = None,
    force: ForceOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
) -> None:
    """Rank a pool of unlabelled configurations: which to label first.

    Design rows are SOAP-based features divided by the expected errors
    (σ_E = 1 meV/atom, σ_F = 20 meV/Å); gains are in the strategy's units
    (nats of information for d-optimal and random). lcmd and kmeans++ select in the posterior
    kernel after --train (energy rows, or force rows with --features forces); ggfps needs
    --force-norms (oed compare and oed loop run compute them with GFN2-xTB themselves).
    """
    from oed.design import rank_pool
    from oed.errors import InputError
    from oed.io import read_structures, write_structures

    if budget < 1:
        raise InputError(f"--budget must be >= 1, got {budget}")
    if output is not None:
        check_output_file(output, what="--output", force=force)
    norms = None
    if force_norms is not None:
        try:
            norms = np.load(force_norms, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read --force-norms {force_norms} as a .npy array: {exc}") from None
    else:
        from oed.selectors import selector_class

        if selector_class(strategy).uses_force_norms:  # before any feature is computed
            raise InputError(f"--strategy {strategy} weights picks by force norms: give --force-norms FILE.npy "
                             f"(one ||F|| in eV/Å per configuration of {pool}, e.g. from GFN2-xTB), or use "
                             f"oed loop run --strategy {strategy} / oed compare, which compute them with GFN2-xTB")
    spec = _spec(features, descriptor, backend)
    frames = read_structures(pool, what="pool")
    train_frames = read_structures(train, what="training set") if train else []
    target_frames = read_structures(target, what="target set") if target else []
    t0 = time.perf_counter()
    with err.status(f"{descriptor} features ({features}) and {strategy} selection over {len(frames)} configurations"):
        ranking = rank_pool(frames, budget, strategy=strategy, train=train_frames, target=target_frames,
                            seed=seed, reg=reg, spec=spec, cache_dir=cache_dir if cache_dir else False,
                            force_norms=norms)
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
    proxy: Annotated[Optional[str], typer.Option(help="Forecast errors on a proxy teacher, e.g. xtb:gfn2-xtb (see below).")] = None,
    target_error: Annotated[Optional[float], typer.Option(help="With --proxy: force MAE to reach (meV/Å): budget per strategy and a verdict.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="With --proxy: forecast folder, reused by a rerun (default POOL-stem_plan).")] = None,
    seeds: Annotated[int, typer.Option(help="With --proxy: seeds of the simulated runs.")] = 2,
    model: Annotated[str, typer.Option(help="With --proxy: the model you will train (gap, mace).")] = "gap",
    e0s: Annotated[Optional[Path], typer.Option(help="With --proxy: DFT isolated-atom energies (extxyz) for the calibration fits.")] = None,
    dft_label_seconds: Annotated[float, typer.Option(help="With --proxy: seconds per DFT label, to state the forecast's cost.")] = 8.0,
    workers: Annotated[Optional[int], typer.Option(help="With --proxy: parallel fits and labels (default one per core).")] = None,
    theory: Annotated[bool, typer.Option(help="With --proxy and a GAP: also the closed-form sparse-GP check (theory in --json).")] = True,
) -> None:
    """Forecast, before the DFT is run, what each strategy's labels will buy.

    With --proxy xtb:gfn2-xtb (recommended): the pool and --target are labelled
    with the cheap method, every strategy is run on those labels with the model
    you will train, and the curves are moved to the DFT level by the DFT/proxy
    error ratio of a small DFT-labelled seed set (--train, e.g. 20 random pool
    configurations; without it the errors stay at the proxy's level). Prints
    force MAE (meV/Å) per strategy and budget with 95 % bounds; --json gives
    budgets and strategies.<name>.force_mae / energy_mae (+ _lower/_upper), and
    with --target-error the budget to reach it and a feasibility verdict.
    A theory check (GAP only, --no-theory to skip) fits the GAP's own sparse-GP
    posterior in closed form, with marginal-likelihood hyperparameters and
    leave-one-configuration-out errors: an independent DFT/proxy ratio on the
    seed set and a random-picking curve, reported beside the forecast, never in it.

    Without --proxy: the label-free forecast — mean posterior predictive
    variance over the target (σ² units), effective dimension and, with --train
    and --features forces, a force RMSE (Barzdajn & Race 2025). It certifies the
    variance-minimising designs and can rank strategies backwards (tutorial 2).
    """
    if proxy is not None:
        from loops.cli_plan import proxy_plan
        from oed.errors import InputError as _InputError

        try:
            budget_list = [int(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise _InputError(f"--budgets must be comma-separated integers, got {budgets!r}") from None
        if plot is not None:
            check_output_file(plot, what="--plot")
        proxy_plan(pool, budgets=budget_list, strategies=[n.strip() for n in strategies.split(",") if n.strip()],
                   proxy=proxy, train=train, target=target, target_error=target_error, out=out, seeds=seeds,
                   model=model, e0s=e0s, dft_label_seconds=dft_label_seconds, workers=workers, as_json=as_json,
                   plot=plot, theory=theory)
        return
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
    if plot is not None:
        check_output_file(plot, what="--plot")
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
    from oed.domain import GAMMA_STOP, GAMMA_WARN, ExtrapolationGrade, flag, plot_gamma
    from oed.io import read_structures

    if plot is not None:
        check_output_file(plot, what="--plot")
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
            "fraction_extrapolating": float(np.mean(flag(g))),
            "fraction_above_warn": float(np.mean(flag(g, GAMMA_WARN))),
            "fraction_above_stop": float(np.mean(flag(g, GAMMA_STOP))),
        }
        for name, g in gammas.items()
    }
    if plot is not None:
        plot_gamma(gammas, plot, title=f"extrapolation grade vs {Path(train).name}")
    if as_json:
        payload = {
            "train": str(train),
            "gamma": [_finite(x) for g in gammas.values() for x in g],
            "extrapolating": [bool(x) for g in gammas.values() for x in flag(g)],
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


def _bundled(name: str) -> Path:
    """Absolute path of a bundled data file (package ``oed_data``, found with importlib.resources)."""
    try:
        import oed_data
    except ImportError:
        from oed.errors import InputError

        raise InputError("the bundled data (package oed_data) is not installed: reinstall oed "
                         "(pip install . or pip install -e .)") from None
    return oed_data.path(name)


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


# The commands that touch the world (label, loop run, demo, compare) live in loops/cli_runs.py.
from loops import cli_runs  # noqa: E402,F401  (registers them on ``app``)
from loops import cli_tools  # noqa: E402,F401  (oed loop status/export/report, on ``loop_app``)
from loops import cli_shift  # noqa: E402,F401  (oed shift)


def main() -> None:
    """Console-script entry point.

    SIGTERM and SIGINT end the child processes (labelling workers, ``gap_fit``) and exit with
    128 + the signal number and one line; what was committed stays, and the same command resumes.
    A Python warning is one line, not a source listing.
    """
    import signal
    import warnings

    from loops import interrupt

    warnings.showwarning = _one_line_warning
    with interrupt.handling_signals():
        try:
            app()
        except BaseException as exc:
            signum = interrupt.received()
            if signum is None or isinstance(exc, SystemExit) and exc.code == 0:
                raise
            interrupt.end_children()
            name = signal.Signals(signum).name
            err.print(f"[bold red]stopped by {name}[/]: child processes ended; what was committed is kept — "
                      "rerun the same command to resume", highlight=False)
            raise SystemExit(128 + signum) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
