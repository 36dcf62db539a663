"""Tutorial 10 (the proxy-teacher forecast against measured curves): the smoke run works end to end,
and the committed summary is what its committed forecast.csv and plan_<system>.json render.

A file of its own so that pytest-xdist (one file per process) runs it beside the other tutorials.
"""

from __future__ import annotations

import json

import pytest
from test_tutorials import TUTORIALS, _module, _rows, _run, assert_same_numbers

NAME = "10_proxy_forecast"


@pytest.mark.integration  # real GFN2-xTB labels and real gap_fit on ethanol and 3BPA: a few minutes
def test_forecast_tutorial_smoke_writes_every_output(tmp_path):
    out = tmp_path / "t10"
    proc = _run(NAME, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out / "forecast.csv")
    assert {r["system"] for r in rows} == {"ethanol", "3bpa"}
    assert {"strategy", "budget", "metric", "forecast", "lower", "upper", "proxy", "measured"} <= set(rows[0])
    for r in rows:  # every cell is forecast with bounds around it and measured on DFT labels
        assert float(r["lower"]) <= float(r["forecast"]) <= float(r["upper"])
        assert float(r["measured"]) > 0
    for system in ("ethanol", "3bpa"):
        plan = json.loads((out / f"plan_{system}.json").read_text())
        assert set(plan["strategies"]) == {r["strategy"] for r in rows if r["system"] == system}
        assert plan["cost"]["total_seconds"] > 0 and "pool" not in plan  # no machine paths in a committed file
        assert (out / f"forecast_{system}.png").stat().st_size > 10_000
    assert (out / "forecast_vs_measured.png").stat().st_size > 10_000
    assert_same_numbers((out / "summary.md").read_text(), _module(NAME).render_summary(out / "forecast.csv", out))


def test_forecast_tutorial_committed_summary_matches_committed_results():
    out = TUTORIALS / "outputs" / NAME
    assert (out / "forecast.csv").exists(), f"run `python tutorials/{NAME}.py` and commit its outputs"
    assert_same_numbers((out / "summary.md").read_text(), _module(NAME).render_summary(out / "forecast.csv", out))
