"""Smoke run of tutorial 09 (shift diagnostics and test-time refinement) and its committed summary.

A file of its own: its smoke run takes minutes, and pytest-xdist keeps a file on one process.
"""

from __future__ import annotations

import pytest

SHIFT = "09_distribution_shift"


@pytest.mark.integration
def test_shift_tutorial_smoke_runs_and_rerun_fits_nothing(tmp_path):
    from test_tutorials import _module, _rows, _run, assert_same_numbers

    out = tmp_path / "t9"
    proc = _run(SHIFT, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out / "results.csv")
    assert {"strategy", "seed", "budget", "test_set", "metric", "value", "refinement"} <= set(rows[0])
    assert {r["refinement"] for r in rows} == {"none", "radius", "ttt"}
    for figure in ("shift.png", "diagnostics_vs_error.png"):
        assert (out / figure).stat().st_size > 10_000
    assert_same_numbers((out / "summary.md").read_text(), _module(SHIFT).render_summary(out / "results.csv"))
    cached = sorted((out / "work").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    proc = _run(SHIFT, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert _rows(out / "results.csv") == rows


def test_shift_tutorial_committed_summary_matches_committed_results():
    from test_tutorials import TUTORIALS, _module, assert_same_numbers

    out = TUTORIALS / "outputs" / SHIFT
    assert (out / "results.csv").exists(), f"run `python tutorials/{SHIFT}.py` and commit its outputs"
    assert_same_numbers((out / "summary.md").read_text(), _module(SHIFT).render_summary(out / "results.csv"))
