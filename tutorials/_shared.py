"""What the tutorial scripts share: command line, comparison runs, cached work, tidy tables.

Not a tutorial itself; each ``tutorials/NN_*.py`` imports it (they run from the checkout, with
``tutorials/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
DATA = ROOT / "data"

from oed.io import atomic_write_text  # noqa: E402

#: A molecule in a vacuum box (Å): far wider than any cutoff, so no image sees another.
BOX_A = 30.0


def parse_args(doc: str, default_out: Path, argv=None, *,
               workers_help: str = "parallel cells (default: one per core)",
               summary_only: str | None = None) -> tuple[argparse.Namespace, Path]:
    """``--smoke``, ``--out``, ``--workers`` (and ``--summary-only`` with its help, when given); returns
    (args, output folder).

    ``--smoke`` needs an explicit ``--out``: the default folder holds the committed outputs of the
    full run, which a smoke run must never overwrite.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny version for CI")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {default_out})")
    parser.add_argument("--workers", type=int, default=None, help=workers_help)
    if summary_only:
        parser.add_argument("--summary-only", action="store_true", help=summary_only)
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out (the default folder holds the committed full-run outputs)")
    return args, (args.out if args.out is not None else default_out)


def run_comparisons(runs: Mapping, relabel: Callable[[object, str], str], *, smoke: bool,
                    describe: Callable[[object], str] = str) -> list[dict]:
    """Run (or resume) each :class:`~loops.compare.CompareConfig`; rows with relabelled strategies."""
    from loops.compare import run_compare

    rows = []
    for key, config in runs.items():
        print(f"== {describe(key)} → {config.out}", flush=True)
        for r in run_compare(config, progress=not smoke, log=lambda m: print(m, flush=True)):
            rows.append({**r, "strategy": relabel(key, r["strategy"])})
    return rows


def methanol_test_file(work: Path) -> Path:
    """The 145 methanol configurations of ``test_eth_meth.xyz`` as their own test file (written once).

    The file's other 1000 configurations are test_MD itself, so only methanol is new.
    """
    from oed.io import read_structures, write_structures

    path = Path(work) / "test_methanol.xyz"
    if not path.exists():
        write_structures(path, [a for a in read_structures(DATA / "ethanol" / "test_eth_meth.xyz")
                                if a.info.get("config_type") == "methanol"])
    return path


def in_box(atoms, box: float = BOX_A):
    """Centre a molecule in a cubic vacuum box of side ``box`` Å (non-periodic), in place."""
    atoms.cell = [box] * 3
    atoms.pbc = False
    atoms.center()
    return atoms


def label_xtb(frames, workers, what: str) -> list:
    """GFN2-xTB labels (``loops.xtb``); failures are reported and dropped, labels boxed."""
    from loops.xtb import label_many_xtb

    results = label_many_xtb(frames, workers=workers, progress=True)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"  {len(failed)} of {len(frames)} {what} not labelled (dropped): {failed[0].error}")
    return [in_box(r.atoms) for r in results if r.ok]


def check_work_config(cfg, work: Path, **resolved) -> None:
    """Refuse to reuse cached work made with other settings (e.g. a smoke run's).

    ``resolved`` adds what ``cfg`` only refers to — e.g. the full GAP settings its overrides
    resolve to — so that a change of library defaults also invalidates the cache.
    """
    from dataclasses import asdict

    text = json.dumps({**asdict(cfg), **resolved}, indent=1, sort_keys=True, default=list)
    stamp = Path(work) / "config.json"
    if stamp.is_file() and stamp.read_text() != text:
        raise SystemExit(f"{work} holds work done with other settings (see {stamp}); "
                         "delete that folder or choose another --out")
    atomic_write_text(stamp, text)


@dataclass(frozen=True)
class Design:
    """A hand-built training set (tutorials 4 and 5) and where to score it.

    ``columns`` are the results.csv columns that name the design (strategy, molecules, …).
    """

    label: str
    seed: int
    train: list
    tests: dict  # test-set name -> extxyz path
    e0s: dict
    gap: dict  # GAPSettings fields
    out: Path
    columns: dict


def fit_designs(designs, metrics: Sequence[str]) -> list[dict]:
    """Fit and score each design as a one-round campaign (``loops.campaign.train_on_design``).

    ``designs`` yields :class:`Design` (lazily: each is built when its turn comes). Finished
    cells are read back, not refitted. Returns tidy rows: the design's columns, seed, budget,
    test_set, n_test, metric, value (meV/atom, meV/Å).
    """
    from loops.campaign import ModelRef, train_on_design
    from loops.gap import GAPSettings
    from loops.parallel import progress_bar

    designs = list(designs)
    rows = []
    with progress_bar(True) as bar:
        task = bar.add_task("GAP fits", total=len(designs))
        for d in designs:
            cell = train_on_design(d.train, out=d.out, label=d.label, seed=d.seed, e0s=d.e0s, tests=d.tests,
                                   model=ModelRef("gap", GAPSettings(**d.gap), seed=d.seed))
            for test_set, errors in cell["errors"].items():
                for metric in metrics:
                    rows.append({**d.columns, "seed": d.seed, "budget": cell["n_labelled"], "test_set": test_set,
                                 "n_test": errors["n_configs"], "metric": metric, "value": repr(float(errors[metric]))})
            bar.advance(task)
    return rows


def finish(out: Path, rows, columns: Sequence[str], render_summary, plot, t0: float) -> Path:
    """Write ``results.csv``, ``summary.md`` (rendered from it alone) and ``errors.png``."""
    import time

    results = Path(out) / "results.csv"
    write_rows(results, rows, columns)
    atomic_write_text(Path(out) / "summary.md", render_summary(results))
    plot(results, Path(out) / "errors.png")
    print(f"  done in {time.perf_counter() - t0:.0f} s: {results}, summary.md, errors.png", flush=True)
    return results


def read_rows(results_csv, int_keys: Sequence[str]) -> list[dict]:
    """Rows of a tutorial's results.csv: ``value`` as float, ``int_keys`` as int."""
    with open(results_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["value"] = float(r["value"])
        for key in int_keys:
            r[key] = int(r[key])
    return rows


def write_rows(path: Path, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Write rows as CSV with these columns, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def mean_ci(values) -> tuple[float, float | None]:
    """Mean and half-width of the 95 % Student-t interval (n − 1 dof); ``None`` for n = 1."""
    from loops.report import t_interval

    mean, half = t_interval(list(values))
    return mean, (None if math.isnan(half) else half)


def fmt(x: float) -> str:
    """Three significant figures, more or less: 123, 12.3, 1.23."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def cell(mean: float, half: float | None) -> str:
    return fmt(mean) if half is None else f"{fmt(mean)} ± {fmt(half)}"
