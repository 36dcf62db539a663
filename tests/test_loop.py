"""The active-learning loop, end to end with real PySCF (HF/STO-3G) and real gap_fit."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from loops.errors import RunMismatchError
from loops.gap import GAPSettings
from loops.loop import LoopConfig, run_loop
from oed.io import read_structures, write_structures

#: full loops with real PySCF and gap_fit.
pytestmark = pytest.mark.integration

SMALL_GAP = GAPSettings(n_max=4, l_max=3, n_sparse=20)


@pytest.fixture(scope="module")
def files(tmp_path_factory, ethanol_dir):
    d = tmp_path_factory.mktemp("loopdata")
    write_structures(d / "pool.xyz", read_structures(ethanol_dir / "train.xyz")[:40])
    write_structures(d / "test_md.xyz", read_structures(ethanol_dir / "test_MD.xyz")[:10])
    # energies only, like the OOD files: evaluation must skip forces
    write_structures(d / "nm.xyz", read_structures(ethanol_dir / "test_norm_mode_874.xyz")[:5])
    return d


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, ctime, unique_id FROM systems ORDER BY id").fetchall()


def config(files, out, **kw):
    base = LoopConfig(pool=files / "pool.xyz", tests=(files / "test_md.xyz", files / "nm.xyz"), out=out,
                      n_init=4, batch_size=3, n_rounds=1, strategy="d-optimal", method="hf/sto-3g",
                      workers=1, gap=SMALL_GAP)
    return replace(base, **kw)


def test_loop_runs_resumes_and_extends_without_relabelling(files, tmp_path):
    out = tmp_path / "run"
    cfg = config(files, out)
    results = run_loop(cfg, log=lambda m: None, progress=False)
    assert [r["n_labelled"] for r in results] == [4, 7]
    for r in results:
        md, nm = r["errors"]["test_md"], r["errors"]["nm"]
        assert {"energy_mae", "energy_rmse", "force_mae", "force_rmse"} <= set(md)
        assert "energy_mae" in nm and "force_mae" not in nm
    assert (out / "learning_curve.png").stat().st_size > 0
    assert len(read_structures(out / "labelled.xyz")) == 7
    picks = json.loads((out / "selections" / "d-optimal" / "seed0.json").read_text())
    assert picks["rounds"] == [4, 3] and len(set(picks["selected"])) == 7
    before = rows(out / "labels.db")
    assert len(before) == 7

    # same command again: nothing to do, nothing relabelled
    again = run_loop(cfg, log=lambda m: None, progress=False)
    assert again == results
    assert rows(out / "labels.db") == before

    # one more round: only the new batch is labelled
    more = run_loop(replace(cfg, n_rounds=2), log=lambda m: None, progress=False)
    assert [r["n_labelled"] for r in more] == [4, 7, 10]
    after = rows(out / "labels.db")
    assert after[:7] == before and len(after) == 10


def test_rerun_with_other_settings_is_refused(files, tmp_path):
    out = tmp_path / "run"
    run_loop(config(files, out, n_rounds=0), log=lambda m: None, progress=False)
    with pytest.raises(RunMismatchError, match="strategy"):
        run_loop(config(files, out, n_rounds=0, strategy="random"), log=lambda m: None, progress=False)


def test_killed_run_resumes_without_relabelling(files, tmp_path):
    """SIGKILL the CLI after its third committed label, rerun: each configuration is labelled once.

    The kill comes from a test-only hook (loops.oracles.KILL_AFTER_ENV) at a fixed point, not
    from a timer racing the labeller, so the test cannot pass or fail by timing.
    """
    import os

    from loops.oracles import KILL_AFTER_ENV

    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("oed")), "loop", "run", "--pool", str(files / "pool.xyz"),
           "--test", str(files / "test_md.xyz"), "--out", str(out), "--init", "12", "--batch", "4",
           "--rounds", "1", "--strategy", "random", "--method", "hf/sto-3g", "--workers", "1"]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, KILL_AFTER_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    db = out / "labels.db"
    partial = rows(db)
    assert len(partial) == 3
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = rows(db)
    assert final[: len(partial)] == partial  # nothing labelled before was touched
    assert len(final) == 16  # 12 + 4, each exactly once
    with sqlite3.connect(db) as con:
        keys = con.execute("SELECT COUNT(*) FROM keys WHERE key = 'key'").fetchone()[0]
    assert keys == 16
    results = json.loads((out / "results.json").read_text())
    assert [r["n_labelled"] for r in results] == [12, 16]
