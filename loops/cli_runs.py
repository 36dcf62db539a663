"""The ``oed`` commands that label, fit and run campaigns: label, loop run, demo, compare.

Registered on :data:`loops.cli.app`; each parses its options, builds one configuration and
calls one library function (:mod:`loops.loop`, :mod:`loops.compare`, :mod:`loops.oracles`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from loops.cli import ForceOpt, _bundled, _clean_errors, _parse_workers, app, err, loop_app, out
from loops.rundir import check_output_file

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
    force: ForceOpt = False,
) -> None:
    """Label configurations: writes REF_energy (eV) and REF_forces (eV/Å).

    PySCF at --method by default, or any --oracle (xTB, any ASE calculator). The output keeps
    the input order and info keys. A configuration whose calculation fails (an SCF that does
    not converge) gets no label: the command reports it and exits 1.
    """
    from oed.io import read_structures, write_structures

    check_output_file(output, what="--output", force=force)  # before any label is computed
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


def _run_loop(config, scheduler: Optional[str] = None, cluster: Optional[dict] = None) -> list[dict]:
    from loops.loop import run_loop
    from loops.parallel import dask_client

    t0 = time.perf_counter()
    if cluster is not None:
        from loops.loop_config import cluster_client

        config.validate()  # before any batch job is submitted
        connect = cluster_client(cluster)
    else:
        connect = dask_client(scheduler)
    with connect as client:
        results = run_loop(config, log=_log, client=client)
    out.print(_results_table(results, f"{config.strategy} @ {config.oracle_spec}: errors per round"))
    out.print(f"results: {Path(config.out) / 'results.json'}", soft_wrap=True)
    out.print(f"learning curve: {Path(config.out) / 'learning_curve.png'}", soft_wrap=True)
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return results


@loop_app.command("run")
@_clean_errors
def loop_run(
    ctx: typer.Context,
    test: Annotated[Optional[list[Path]], typer.Option(help="Test file (repeat for several). Required (here or in --config).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory (rerun to resume). Required (here or in --config).")] = None,
    pool: Annotated[Optional[Path], typer.Option(help="Candidate configurations (extxyz). Optional with --explore md and --init-from.")] = None,
    init: Annotated[int, typer.Option(help="Size of the initial design.")] = 10,
    batch: Annotated[int, typer.Option(help="Configurations picked per round.")] = 10,
    rounds: Annotated[int, typer.Option(help="Rounds after the initial design.")] = 3,
    strategy: Annotated[str, typer.Option(help="Selection strategy for the rounds, as in oed compare: a selector (d-optimal, lcmd, kmeans++, fps, …), name@space (spaces: soap, gap-kernel, gap-gp, each +forces; e.g. lcmd@gap-gp+forces), gap-variance, lfab / lfab-top / lfab-energy (model-driven, GFN2-xTB cheap labels in DIR/cheap_labels.db) or ggfps (GFN2-xTB force norms). With --explore md: a selector name.")] = "d-optimal",
    init_strategy: Annotated[Optional[str], typer.Option(help="Label-free strategy of the initial design (default: --strategy; random when --strategy needs a fitted model).")] = None,
    method: Annotated[str, typer.Option(help="Level of theory, xc/basis (PySCF, the default oracle).")] = "pbe/def2-svp",
    oracle: Annotated[Optional[str], typer.Option(help="Labels from: pyscf:xc/basis, xtb:gfn2-xtb, 'ase:MODULE:CLASS[:JSON]', or pool (replay the pool's labels). Default: pyscf at --method.")] = None,
    model: Annotated[str, typer.Option(help="Model fitted each round: gap, mace, or mace-ttt (two heads, for --ttt).")] = "gap",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Labelling processes (default: one per core).")] = None,
    e0s: Annotated[Optional[Path], typer.Option(help="Isolated-atom energies (extxyz); default: computed by the oracle.")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="Evaluate at most N configurations per test file.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address: label on a Dask cluster.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(help="Seed geometries (extxyz), labelled in round 0; needs --explore md.")] = None,
    explore: Annotated[Optional[str], typer.Option(help="md: each round runs MD with the current model and picks from the frames it finds.")] = None,
    temperatures: Annotated[str, typer.Option(help="Exploration MD temperatures, K (comma-separated).")] = "300,600",
    md_steps: Annotated[int, typer.Option(help="Steps per exploration trajectory.")] = 400,
    max_md_steps: Annotated[Optional[int], typer.Option(help="A round that finds nothing above --trust-lo is explored again with twice the steps, up to this many, before the run counts as converged; later rounds keep the longer runs (default: no escalation).")] = None,
    timestep: Annotated[float, typer.Option(help="MD time step, fs.")] = 0.5,
    starts: Annotated[int, typer.Option(help="Trajectories per temperature and round.")] = 4,
    uncertainty: Annotated[str, typer.Option(help="Per-frame uncertainty: gamma (extrapolation grade), gap-variance (√ mean local GAP variance, eV/atom), committee (force deviation max over atoms, eV/Å; needs --committee).")] = "gamma",
    trust_lo: Annotated[Optional[float], typer.Option(help="Frames at or above it are candidates (unit of --uncertainty; default per uncertainty: gamma 1.5, gap-variance 0.002, committee 0.05).")] = None,
    trust_hi: Annotated[Optional[float], typer.Option(help="A trajectory stops at a frame at or above it (default: gamma 10, gap-variance 0.02, committee 0.30).")] = None,
    max_labels: Annotated[Optional[int], typer.Option(help="Stop an exploring run at this many labels.")] = None,
    committee: Annotated[int, typer.Option(help="Train a committee of K models each round (seeds and 80 % subsamples); its force deviation is --uncertainty committee (eV/Å). 0: one model.")] = 0,
    md_stability: Annotated[int, typer.Option(help="After each exploring round, MD steps at 300 K from test geometries to measure stability (0: off).")] = 0,
    ttt: Annotated[bool, typer.Option("--ttt", help="Also score every model after test-time training on a GFN2-xTB prior (Kreiman & Krishnapriyan, arXiv:2503.08674): the model is the two-head MACE mace-ttt (DFT and GFN2-xTB heads on one representation; --model mace is switched to it), which takes 10 Adam steps on its xTB head's loss per batch of 8 test configurations and predicts with its DFT head. No DFT label of a test configuration is used; results get a refinement column (none, ttt).")] = False,
    radius_refinement: Annotated[bool, typer.Option("--radius-refinement", help="Also score every MACE with radius refinement: per test configuration the graph radius among 1.0, 0.9, …, 0.6 × r_max whose normalised-Laplacian spectrum is nearest a training graph (no label used).")] = False,
    db: Annotated[Optional[str], typer.Option(help="Keep the labels on a PostgreSQL server instead of DIR/labels.db: postgresql://user@host:port/dbname (password from PGPASSWORD or ~/.pgpass, never written to disk; needs pip install 'oed[postgres]'). A resumed run must name the same --db.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="TOML file of options (keys: option names, e.g. init-from, md-steps); options given on the command line win. A [cluster] table labels on Slurm/PBS/SGE through dask-jobqueue.")] = None,
) -> None:
    """Run or resume an active-learning loop: select → label → fit → score, round after round.

    Labels come from PySCF at --method unless --oracle names another source; each is
    committed to DIR/labels.db the moment it exists, so rerunning the same command resumes
    (nothing is labelled twice) and a larger --rounds extends the run.

    With --explore md the candidates come from the model itself: round 0 labels the
    --init-from geometries, and each later round runs Langevin MD with the model of the round
    before at --temperatures. Every 10th frame is graded by --uncertainty; frames between
    --trust-lo and --trust-hi are candidates, a trajectory stops at --trust-hi or on a
    physical failure (broken bond, fragments, atoms colliding, energy blow-up), and
    --strategy picks at most --batch of the candidates. A round whose MD finds no frame
    above --trust-lo is converged and ends the run (DIR/stop.json says why it stopped);
    with --max-md-steps it is first explored again with trajectories twice as long, up to that.
    """
    from loops.explore import ExploreSettings
    from loops.loop import LoopConfig
    from oed.errors import InputError

    cluster = None
    if config_file is not None:
        from loops.loop_config import load_config, merge_options

        options, cluster = load_config(config_file)
        given = {k: v for k, v in locals().items() if k in _LOOP_RUN_OPTIONS}
        merged = merge_options(ctx, given, options, Path(config_file).resolve().parent)
        (test, out_dir, pool, init, batch, rounds, strategy, init_strategy, method, oracle, model, seed, workers, e0s,
         test_limit, scheduler, init_from, explore, temperatures, md_steps, max_md_steps, timestep, starts, uncertainty,
         trust_lo, trust_hi, max_labels, committee, md_stability, ttt, radius_refinement, db) = (
            merged[k] for k in _LOOP_RUN_OPTIONS)
    if not test or out_dir is None:
        raise InputError("give --test and --out (on the command line or in --config)")
    if cluster is not None and scheduler is not None:
        raise InputError("give either --scheduler or a [cluster] table, not both")
    model, refinements = _refinements(model, ttt, radius_refinement)
    exploration = ExploreSettings(temperatures=_csv_list(temperatures, "--temperatures", float), md_steps=md_steps,
                                  max_md_steps=max_md_steps, timestep_fs=timestep, starts=starts, uncertainty=uncertainty,
                                  trust_lo=trust_lo, trust_hi=trust_hi)
    config = LoopConfig(pool=pool, tests=tuple(test), out=out_dir, n_init=init, batch_size=batch,
                        n_rounds=rounds, strategy=strategy, init_strategy=init_strategy, method=method,
                        oracle=oracle, model=model, seed=seed, workers=_parse_workers(workers), e0s_file=e0s,
                        test_limit=test_limit, init_from=init_from, explore=explore, exploration=exploration,
                        max_labels=max_labels, md_stability_steps=md_stability, committee=committee,
                        refinements=refinements, db=db)
    _run_loop(config, scheduler, cluster)


_LOOP_RUN_OPTIONS = ("test", "out_dir", "pool", "init", "batch", "rounds", "strategy", "init_strategy", "method",
                     "oracle", "model", "seed", "workers", "e0s", "test_limit", "scheduler", "init_from", "explore",
                     "temperatures", "md_steps", "max_md_steps", "timestep", "starts", "uncertainty", "trust_lo", "trust_hi",
                     "max_labels", "committee", "md_stability", "ttt", "radius_refinement", "db")


def _refinements(model: str, ttt: bool, radius: bool) -> tuple[str, tuple[str, ...]]:
    """(model, refinements) for --ttt / --radius-refinement: TTT needs the two-head mace-ttt."""
    if ttt and model == "mace":
        _log("--ttt: training the two-head MACE mace-ttt (DFT and GFN2-xTB heads) instead of mace")
        model = "mace-ttt"
    return model, tuple(r for r, on in (("radius", radius), ("ttt", ttt)) if on)


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
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies (selectors; gap-variance or lfab in sequential mode; ggfps and lfab read GFN2-xTB labels of the candidates, counted in cheap_cost.csv).")] = "random,fps,cur,kmeans,d-optimal,i-optimal",
    budgets: Annotated[str, typer.Option(help="Comma-separated training-set sizes.")] = "25,50,100,200",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 … N−1).")] = 5,
    model: Annotated[str, typer.Option("--model", "--train-with", help="Model trained and scored: gap, mace, or mace-ttt (two heads, DFT and GFN2-xTB, for --ttt).")] = "gap",
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
    md_stability: Annotated[int, typer.Option(help="Per cell, MD steps (0.5 fs, 300 K) from 4 geometries of the first test file: time to the first physical failure (broken bond, fragments, collision, energy blow-up) in summary.md and md_stability.csv. 0: off.")] = 0,
    ttt: Annotated[bool, typer.Option("--ttt", help="Also score every model after test-time training on a GFN2-xTB prior (Kreiman & Krishnapriyan, arXiv:2503.08674): the model is the two-head MACE mace-ttt (DFT and GFN2-xTB heads on one representation; --model mace is switched to it), which takes 10 Adam steps on its xTB head's loss per batch of 8 test configurations and predicts with its DFT head. No DFT label of a test configuration is used; results get a refinement column (none, ttt).")] = False,
    radius_refinement: Annotated[bool, typer.Option("--radius-refinement", help="Also score every MACE with radius refinement: per test configuration the graph radius among 1.0, 0.9, …, 0.6 × r_max whose normalised-Laplacian spectrum is nearest a training graph (no label used).")] = False,
    dft_label_seconds: Annotated[float, typer.Option(help="Seconds per DFT label, to count cheap-oracle labels (lfab, ggfps) in DFT-label equivalents when the oracle's are not measured (pool replay). Default: PBE/def2-SVP, one ethanol, 2 cores.")] = 8.0,
    db: Annotated[Optional[str], typer.Option(help="With a live oracle, keep the labels on a PostgreSQL server instead of OUT/labels.db: postgresql://user@host:port/dbname (password from PGPASSWORD or ~/.pgpass, never written to disk; needs pip install 'oed[postgres]'). A resumed comparison must name the same --db.")] = None,
) -> None:
    """Compare selection strategies: strategies × seeds × budgets, errors in and out of distribution.

    Writes results.csv (strategy, seed, budget, test_set, metric, value), summary.md (mean ± 95%
    CI, label efficiency against random and FPS, AULC) and learning_curve_<test set>.png.
    Finished cells are kept: a rerun only does what is missing.
    """
    from loops.compare import CompareConfig, run_compare

    model, refinements = _refinements(model, ttt, radius_refinement)
    config = CompareConfig(
        pool=pool, tests=tuple(test), out=out_dir, strategies=_csv_list(strategies, "--strategies"),
        budgets=_csv_list(budgets, "--budgets", int), n_seeds=seeds, model=model, select_with=select_with,
        features=features, mode=mode, oracle=oracle, pool_fraction=pool_fraction, target=target, e0s_file=e0s,
        test_limit=test_limit, workers=_parse_workers(workers), keep_models=keep_models, md_stability_steps=md_stability,
        dft_label_seconds=dft_label_seconds, refinements=refinements, db=db,
    )
    from loops.parallel import dask_client

    t0 = time.perf_counter()
    with dask_client(scheduler) as client:
        run_compare(config, log=_log, client=client)
    from rich.markdown import Markdown

    out.print(Markdown((Path(out_dir) / "summary.md").read_text()))
    out.print(f"results: {Path(out_dir) / 'results.csv'}", soft_wrap=True)
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")
