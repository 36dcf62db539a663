"""Tutorials: the smoke runs work end to end and resume, and the committed outputs agree with their data.

A summary.md is checked by its numbers, not its bytes: every number in it must match the
number in the same place of a summary rendered afresh from results.csv, to the precision
printed. Wording, layout and precision of the report may change; the values may not.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NAMES = ["04_diversity", "05_composition"]
METRICS = {"energy_mae", "energy_rmse", "force_mae", "force_rmse"}
REQUIRED_COLUMNS = {"strategy", "seed", "budget", "test_set", "metric", "value"}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


#: A number standing alone (not the digits of a name such as test_norm_mode_874).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def _numbers(text: str) -> list[tuple[float, float]]:
    """Each number of ``text`` with half a unit of its last printed digit (its rounding)."""
    out = []
    for token in _NUMBER.findall(text):
        mantissa, _, exponent = token.lower().partition("e")
        decimals = len(mantissa.partition(".")[2])
        out.append((float(token), 0.5 * 10.0 ** (int(exponent or 0) - decimals)))
    return out


def assert_same_numbers(committed: str, rendered: str) -> None:
    """The two texts hold the same numbers in the same order, equal within their printed rounding."""
    a, b = _numbers(committed), _numbers(rendered)
    assert len(a) == len(b), f"{len(a)} numbers committed, {len(b)} rendered"
    for k, ((x, dx), (y, dy)) in enumerate(zip(a, b)):
        assert abs(x - y) <= dx + dy + 1e-9 * max(abs(x), abs(y)), (
            f"number {k}: committed {x} vs rendered {y}; context: "
            f"{' '.join(f'{v:g}' for v, _ in a[max(0, k - 4):k + 2])}"
        )


def test_number_comparison_catches_a_changed_value_but_not_a_changed_format():
    rendered = "| kmeans | 63.1 ± 2.1 | 0.96× | test_norm_mode_874, k = 100 |"
    assert_same_numbers("kmeans:  63.14 (±2.1), ratio 0.96, test_norm_mode_874 at k=100", rendered)
    with pytest.raises(AssertionError, match="number 0"):
        assert_same_numbers("| kmeans | 63.3 ± 2.1 | 0.96× | test_norm_mode_874, k = 100 |", rendered)
    with pytest.raises(AssertionError, match="numbers committed"):
        assert_same_numbers("| kmeans | 63.1 ± 2.1 | 0.96× |", rendered)


def _check_results(path: Path) -> list[dict]:
    rows = _rows(path)
    assert rows, f"{path} is empty"
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert {r["metric"] for r in rows} == METRICS
    for r in rows:
        value = float(r["value"])
        assert value >= 0 and math.isfinite(value)
        assert int(r["budget"]) > 0
    return rows


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_outputs_and_resumes(name, tmp_path):
    script = TUTORIALS / f"{name}.py"
    cmd = [sys.executable, str(script), "--smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _check_results(tmp_path / "results.csv")
    assert len({r["strategy"] for r in rows}) >= 2
    assert len({r["test_set"] for r in rows}) >= 2
    assert (tmp_path / "errors.png").stat().st_size > 10_000
    module = _module(name)
    assert_same_numbers((tmp_path / "summary.md").read_text(), module.render_summary(tmp_path / "results.csv"))

    # a rerun reads the cached work (fitted and scored cells, normal modes) instead of redoing it
    cached = sorted((tmp_path / "work").rglob("cells/**/*.json")) + sorted((tmp_path / "work").rglob("modes/*.npz"))
    assert any(p.suffix == ".json" for p in cached) and any(p.suffix == ".npz" for p in cached)
    stamps = [p.stat().st_mtime_ns for p in cached]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert _rows(tmp_path / "results.csv") == rows


@pytest.mark.parametrize("name", NAMES)
def test_smoke_needs_out(name):
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / f"{name}.py"), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "--out" in proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_committed_summary_is_rendered_from_committed_results(name):
    out = TUTORIALS / "outputs" / name
    module = _module(name)
    assert module.DEFAULT_OUT == out
    rows = _check_results(out / "results.csv")
    assert len({r["seed"] for r in rows}) >= 3  # the full run, not a smoke run
    assert_same_numbers((out / "summary.md").read_text(), module.render_summary(out / "results.csv"))
    assert (out / "errors.png").is_file()


# -- tutorials 01-03: built on `oed compare` ---------------------------------------------------------------
COMPARE_TUTORIALS = ["01_strategies_ethanol", "02_forecast_vs_measurement", "03_cross_algorithm",
                     "06_pools_where_selection_pays", "07_selection_that_pays", "08_redundant_md_pool"]
#: Smoke-run here; the others in test_tutorials_compare.py, so that pytest-xdist (one file per
#: process) runs the two halves side by side.
SMOKE_HERE = COMPARE_TUTORIALS[:2]
FIGURES = {
    "01_strategies_ethanol": ["learning_curves_oneshot.png", "learning_curves_sequential.png"],
    "02_forecast_vs_measurement": ["forecast_vs_measured.png"],
    "03_cross_algorithm": ["learning_curves.png"],
    "06_pools_where_selection_pays": ["learning_curves.png"],
    "07_selection_that_pays": ["learning_curves.png"],
    "08_redundant_md_pool": ["learning_curves.png"],
}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    """Tutorial 2's smoke output folder; its tutorial1/ subfolder doubles as tutorial 1's smoke run."""
    return tmp_path_factory.mktemp("compare_tutorials")


def _smoke_out(name: str, base: Path) -> Path:
    return {"01_strategies_ethanol": base / "t2" / "tutorial1", "02_forecast_vs_measurement": base / "t2",
            "03_cross_algorithm": base / "t3", "06_pools_where_selection_pays": base / "t6",
            "07_selection_that_pays": base / "t7", "08_redundant_md_pool": base / "t8"}[name]


def _run(name: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TUTORIALS / f"{name}.py"), "--smoke", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def check_compare_smoke(name: str, base: Path) -> None:
    """Smoke-run a compare tutorial, check its outputs, rerun it and check that nothing is refitted."""
    out = _smoke_out(name, base)
    proc = _run(name, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out / "results.csv")
    assert REQUIRED_COLUMNS <= set(rows[0]) and len({r["strategy"] for r in rows}) >= 2
    assert all(math.isfinite(float(r["value"])) for r in rows)
    for figure in FIGURES[name]:
        assert (out / figure).stat().st_size > 10_000
    module = _module(name)
    assert_same_numbers((out / "summary.md").read_text(), module.render_summary(out / "results.csv"))
    cells = sorted((out / "work").rglob("cells/**/*.json")) if (out / "work").exists() else []
    stamps = [p.stat().st_mtime_ns for p in cells]
    proc = _run(name, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    assert _rows(out / "results.csv") == rows


@pytest.mark.integration
@pytest.mark.parametrize("name", SMOKE_HERE)  # in this order: 02 reuses 01's smoke run
def test_compare_tutorial_smoke_runs_and_rerun_fits_nothing(name, smoke_dir):
    check_compare_smoke(name, smoke_dir)


@pytest.mark.parametrize("name", COMPARE_TUTORIALS)
def test_compare_tutorial_committed_summary_matches_committed_results(name):
    out = TUTORIALS / "outputs" / name
    assert (out / "results.csv").exists(), f"run `python tutorials/{name}.py` and commit its outputs"
    assert_same_numbers((out / "summary.md").read_text(), _module(name).render_summary(out / "results.csv"))
    for figure in FIGURES[name]:
        assert (out / figure).exists()
