"""The active-learning loop: select → label (PySCF) → fit (GAP) → evaluate → repeat.

Round 0 labels an initial design of ``n_init`` configurations; each of the
``n_rounds`` rounds after it picks ``batch_size`` more with the selector
conditioned on everything labelled so far. All state lives in the run
directory, so running the same command again resumes:

- ``config.json``   the settings that fix the picks; a rerun with others is refused
- ``picks.json``    each round's picks, written *before* labelling starts (claim)
- ``labels.db``     ase.db (SQLite), one committed row per label or failure
- ``e0s.json``      isolated-atom energies (eV) used as GAP E0s
- ``models/round_NNN/gap.xml``  the potential of each round
- ``results.json``  errors per round and test file (meV/atom, meV/Å)
- ``labelled.xyz``  every label as extended XYZ (REF_energy, REF_forces)
- ``learning_curve.png``
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from oed.design import DEFAULT_REG, FeatureSpec, design_features, fit_selector
from oed.errors import InputError, UnknownElementError
from oed.io import atomic_write_text, pool_hash, read_structures, structure_hash, write_structures
from oed.selectors import selector_class
from loops.gap import GAPModel, GAPSettings
from loops.rundir import check_settings, read_json
from loops.store import LabelStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class LoopConfig:
    """Settings of one active-learning run (the CLI builds this and calls :func:`run_loop`).

    Parameters
    ----------
    pool : Path
        Candidate configurations (extxyz); their labels, if any, are ignored.
    tests : tuple of Path
        Test sets (extxyz with reference energy and/or forces).
    out : Path
        Run directory.
    n_init, batch_size, n_rounds : int
        Initial design size, picks per round, rounds after the initial one.
    strategy : str
        Selector name for the rounds (``oed.selectors.available()``).
    init_strategy : str or None
        Selector for the initial design; default: ``strategy``.
    method : str
        Level of theory, ``xc/basis``.
    seed : int
        Random seed (round r uses ``seed + r``).
    workers : int or None
        Labelling processes; default: one per core.
    e0s_file : Path or None
        Isolated-atom energies (extxyz of single atoms); default: computed
        with the same labeller.
    test_limit : int or None
        Evaluate on at most this many configurations per test file, evenly
        spaced through the file (for quick demos).
    reg : float
        Prior precision of the information matrix (rows scaled by the expected errors).
    features : FeatureSpec
        Feature map and information rows the selector works on.
    gap : GAPSettings
    """

    pool: Path
    tests: tuple[Path, ...]
    out: Path
    n_init: int
    batch_size: int
    n_rounds: int
    strategy: str = "d-optimal"
    init_strategy: str | None = None
    method: str = "pbe/def2-svp"
    seed: int = 0
    workers: int | None = None
    e0s_file: Path | None = None
    test_limit: int | None = None
    reg: float = DEFAULT_REG
    features: FeatureSpec = field(default_factory=FeatureSpec)
    gap: GAPSettings = field(default_factory=GAPSettings)

    def validate(self) -> None:
        """Check the settings before any work.

        Raises
        ------
        InputError
            Non-positive sizes, an unknown strategy, no test file, or two test
            files with the same name.
        """
        for name in ("n_init", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_rounds < 0:
            raise InputError(f"n_rounds must be >= 0, got {self.n_rounds}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.test_limit is not None and self.test_limit < 1:
            raise InputError(f"test_limit must be >= 1, got {self.test_limit}")
        selector_class(self.strategy)
        selector_class(self.init_strategy or self.strategy)
        if not self.tests:
            raise InputError("give at least one test file")
        names = [test_name(p) for p in self.tests]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"test files must have distinct names, repeated: {', '.join(dup)}")
        self.gap.validate()
        self.features.validate()

    def fingerprint(self, pool_digest: str) -> dict:
        """The settings that fix picks and labels: a resumed run must match them."""
        return {
            "pool": pool_digest,
            "tests": sorted(test_name(p) for p in self.tests),
            "n_init": self.n_init,
            "batch_size": self.batch_size,
            "strategy": self.strategy,
            "init_strategy": self.init_strategy or self.strategy,
            "method": self.method,
            "seed": self.seed,
            "test_limit": self.test_limit,
            "reg": self.reg,
            "features": asdict(self.features),
            "gap": asdict(self.gap),
        }


def test_name(path: Path) -> str:
    """Name of a test set in results: its file name without extension."""
    return Path(path).stem


def _subsample(frames: list, limit: int | None) -> list:
    if limit is None or len(frames) <= limit:
        return frames
    idx = np.linspace(0, len(frames) - 1, limit).round().astype(int)
    return [frames[i] for i in idx]


def _load_e0s(config: LoopConfig, species: Sequence[str], out: Path, log: Log) -> dict[str, float]:
    path = out / "e0s.json"
    e0s = read_json(path, {})
    missing = [s for s in species if s not in e0s]
    if not missing:
        return {s: e0s[s] for s in species}
    if config.e0s_file is not None:
        from oed.io import reference_energy

        for atoms in read_structures(config.e0s_file, what="isolated-atoms file"):
            energy = reference_energy(atoms)
            if len(atoms) == 1 and energy is not None:
                e0s[atoms.get_chemical_symbols()[0]] = energy
        still = [s for s in species if s not in e0s]
        if still:
            raise InputError(f"{config.e0s_file} has no isolated-atom energy for {', '.join(still)}")
    else:
        from loops.labelers import isolated_atom_energies

        log(f"isolated-atom energies (E0s) for {', '.join(missing)} at {config.method}")
        e0s.update(isolated_atom_energies(missing, method=config.method))
    atomic_write_text(path, json.dumps(e0s, indent=2))
    return {s: e0s[s] for s in species}


def run_loop(config: LoopConfig, *, log: Log = print, progress: bool = True, client=None) -> list[dict]:
    """Run (or resume) an active-learning loop; returns the per-round results.

    Parameters
    ----------
    config : LoopConfig
    log : callable
        Receives one line per step.
    progress : bool
        Progress bars for labelling.
    client : dask.distributed.Client, optional
        Label on a Dask cluster instead of local processes.

    Returns
    -------
    list of dict
        One entry per finished round: ``round``, ``n_labelled``, ``n_failed``,
        ``n_picked``, ``strategy`` and ``errors`` = {test name: metrics} with
        ``energy_mae``/``energy_rmse`` (meV/atom) and ``force_mae``/``force_rmse``
        (meV/Å) where the test file has those labels.

    Raises
    ------
    InputError, PoolError, UnknownElementError
        Bad settings or files, found before any DFT is run.
    RunMismatchError
        ``config.out`` holds a run with other settings.
    """
    from loops.evaluate import evaluate
    from loops.labelers import label_many, parse_level_of_theory

    config.validate()
    xc, basis = parse_level_of_theory(config.method)
    method = f"{xc}/{basis}"
    pool = read_structures(config.pool, what="pool")
    tests = {
        test_name(p): _subsample(read_structures(p, what="test set"), config.test_limit) for p in config.tests
    }
    if config.n_init > len(pool):
        raise InputError(f"n_init={config.n_init} exceeds the pool size {len(pool)}")
    species = sorted({s for atoms in pool for s in atoms.get_chemical_symbols()})
    for name, frames in tests.items():
        extra = sorted({s for a in frames for s in a.get_chemical_symbols()} - set(species))
        if extra:
            raise UnknownElementError(
                f"test set {name} contains {', '.join(extra)}, absent from the pool: "
                "a model fitted on the pool cannot predict it"
            )

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, config.fingerprint(pool_hash(pool)))
    keys = [structure_hash(a) for a in pool]
    store = LabelStore(out / "labels.db", method)
    e0s = _load_e0s(config, species, out, log)

    log(f"{config.features.kind} features of {len(pool)} pool configurations"
        + (" with force rows" if config.features.forces else ""))
    X, _, _ = design_features(pool, config.features, progress=progress)
    picks: dict[str, list[int]] = read_json(out / "picks.json", {})
    results: list[dict] = read_json(out / "results.json", [])
    done_rounds = {r["round"] for r in results}

    for rnd in range(config.n_rounds + 1):
        status = store.status()
        tried = [i for r in range(rnd) for i in picks.get(str(r), [])]
        if str(rnd) not in picks:
            labelled = [i for i in tried if status.get(keys[i])]
            candidates = np.setdiff1d(np.arange(len(pool)), tried)
            if len(candidates) == 0:
                log(f"round {rnd}: the pool is exhausted; stopping")
                break
            name = (config.init_strategy or config.strategy) if rnd == 0 else config.strategy
            k = config.n_init if rnd == 0 else config.batch_size
            selector = fit_selector(name, min(k, len(candidates)), X.subset(candidates),
                                    X_train=X.subset(labelled) if labelled else None,
                                    seed=config.seed + rnd, reg=config.reg)
            picks[str(rnd)] = [int(candidates[j]) for j in selector.selected_idx_]
            atomic_write_text(out / "picks.json", json.dumps(picks))
        batch = picks[str(rnd)]
        todo = [i for i in batch if keys[i] not in status]
        if todo:
            log(f"round {rnd}: labelling {len(todo)} configurations at {method}"
                + (f" ({len(batch) - len(todo)} already in labels.db)" if len(todo) < len(batch) else ""))

            def commit(result, _todo=todo, _rnd=rnd):
                i = _todo[result.index]
                store.add(keys[i], atoms=result.atoms if result.ok else pool[i], pool_index=i,
                          round=_rnd, seconds=result.seconds, error=result.error)

            label_many([pool[i] for i in todo], method=method, workers=config.workers,
                       client=client, progress=progress, on_result=commit)
        if rnd in done_rounds:
            continue

        chosen = set(tried) | set(batch)
        train = store.labelled(keys={keys[i] for i in chosen})
        n_failed = len(chosen) - len(train)
        if not train:
            raise InputError(f"round {rnd}: every label failed; nothing to fit (see {out / 'labels.db'})")
        log(f"round {rnd}: fitting GAP on {len(train)} configurations")
        t0 = time.perf_counter()
        model = GAPModel(config.gap).fit(train, e0s=e0s, workdir=out / "models" / f"round_{rnd:03d}")
        fit_s = time.perf_counter() - t0
        errors = {name: evaluate(model, frames) for name, frames in tests.items()}
        results.append({
            "round": rnd,
            "n_labelled": len(train),
            "n_failed": n_failed,
            "n_picked": len(batch),
            "strategy": (config.init_strategy or config.strategy) if rnd == 0 else config.strategy,
            "fit_seconds": round(fit_s, 2),
            "errors": errors,
        })
        results.sort(key=lambda r: r["round"])
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        write_structures(out / "labelled.xyz", store.labelled())
        from loops.plots import plot_learning_curve

        plot_learning_curve(results, out / "learning_curve.png", title=f"{config.strategy}, {method}")
        log(f"round {rnd}: " + "; ".join(
            f"{n} F-MAE {e['force_mae']:.1f} meV/Å" if "force_mae" in e else f"{n} E-MAE {e['energy_mae']:.2f} meV/atom"
            for n, e in errors.items()
        ))
    return results
