"""Labels on a PostgreSQL server (``oed loop run --db postgresql://…``), against a real server.

The ``server`` fixture starts its own PostgreSQL in a temporary folder (``initdb`` + ``pg_ctl``,
trust authentication, a free port on localhost, about 4 s) and stops it afterwards; where the
server binaries are missing the tests that need it are skipped with the start-up to install.
As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from loops.cli import app
from loops.errors import RunMismatchError
from loops.store import LabelStore, redact, run_store
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, read_structures, structure_hash, write_structures

LEVEL = "xtb:gfn2-xtb"
SKIP_NO_SERVER = ("no PostgreSQL server binaries (initdb, pg_ctl): install them (Debian: apt install postgresql) "
                  "to run the server tests")


def _server_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    return None


@pytest.fixture(scope="module")
def server():
    """URL of a fresh PostgreSQL server's maintenance database, ``postgresql://oed@localhost:PORT/postgres``."""
    bindir = _server_bin()
    if bindir is None:
        pytest.skip(SKIP_NO_SERVER)
    # not under pytest's tmp_path: its parent is private to root, and the server may run as postgres
    root = Path(tempfile.mkdtemp(prefix="oed-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start the server as postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "oed", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                    "-o", f"-p {port} -k {root} -c listen_addresses=localhost -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://oed@localhost:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db_url(server):
    """A new, empty database on the server for one test."""
    import psycopg2

    name = f"t{uuid.uuid4().hex[:12]}"
    con = psycopg2.connect(server)
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {name}")
    con.close()
    return server.rsplit("/", 1)[0] + f"/{name}"


def _labelled(atoms, energy):
    a = atoms.copy()
    a.calc = None
    a.info = {REF_ENERGY: energy, "config_type": "md", "s2": 0.75, "scf_route": "rks>uks-bs"}
    a.arrays[REF_FORCES] = np.random.default_rng(0).normal(size=(len(a), 3))
    return a


@pytest.mark.postgres
def test_store_on_a_server_round_trips_labels_and_keeps_runs_apart(db_url, ethanol_dir):
    frames = read_structures(ethanol_dir / "train.xyz")[:3]
    store = LabelStore(db_url, LEVEL, run="a")
    first = _labelled(frames[0], -4206.123456789)
    store.add(structure_hash(frames[0]), atoms=first, pool_index=0, round=0, seconds=1.5)
    store.add(structure_hash(frames[1]), atoms=frames[1], pool_index=1, round=0, seconds=9.0, error="SCF not converged")
    assert store.status() == {structure_hash(frames[0]): True, structure_hash(frames[1]): False}
    [back] = store.labelled()
    assert back.info[REF_ENERGY] == first.info[REF_ENERGY]
    np.testing.assert_array_equal(back.arrays[REF_FORCES], first.arrays[REF_FORCES])
    np.testing.assert_array_equal(back.positions, frames[0].positions)
    assert back.info["config_type"] == "md" and len(store) == 2

    # another run on the same database, and a new connection of the first, see only their own rows
    other = LabelStore(db_url, LEVEL, run="b")
    assert other.status() == {} and len(other) == 0
    other.add(structure_hash(frames[2]), atoms=_labelled(frames[2], -1.0), pool_index=0, round=0, seconds=1.0)
    assert set(LabelStore(db_url, LEVEL, run="a").status()) == {structure_hash(f) for f in frames[:2]}
    assert len(LabelStore(db_url, "pyscf:pbe/def2-svp", run="a")) == 0


def test_run_store_records_the_server_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    assert run_store(out, None) == (out / "labels.db", None)
    url = "postgresql://alice:s3cret@db.example:5433/labels"
    where, run = run_store(out, url)
    assert where == url and len(run) == 32
    record = json.loads((out / "store.json").read_text())
    assert record == {"db": "postgresql://alice@db.example:5433/labels", "run": run}
    assert "s3cret" not in (out / "store.json").read_text()
    assert run_store(out, url) == (url, run)  # a resumed run keeps its id
    assert run_store(out, "postgresql://alice@db.example:5433/labels")[1] == run  # password from PGPASSWORD
    with pytest.raises(RunMismatchError, match="keeps its labels at postgresql://alice@db.example:5433/labels"):
        run_store(out, None)
    with pytest.raises(RunMismatchError, match="other:5432"):
        run_store(out, "postgresql://alice@other:5432/labels")
    sqlite_run = tmp_path / "sqlite_run"
    sqlite_run.mkdir()
    (sqlite_run / "labels.db").write_bytes(b"")
    with pytest.raises(RunMismatchError, match="rerun without --db"):
        run_store(sqlite_run, url)
    with pytest.raises(InputError, match="database server URL"):
        run_store(tmp_path / "x", "labels.sqlite")
    assert redact("postgresql://bob@h/d") == "postgresql://bob@h/d"


def test_postgres_backend_is_installed_by_the_test_extra():
    import ase_db_backends.postgresql  # noqa: F401
    import psycopg2  # noqa: F401  (oed[postgres], pulled in by oed[test]: a missing install step fails here)


def test_unreachable_server_is_one_clear_error_without_the_password(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="cannot use the database") as err:
        LabelStore(f"postgresql://oed:hunter2@localhost:{port}/labels", LEVEL, run="a")
    assert "hunter2" not in str(err.value)


@pytest.mark.postgres
@pytest.mark.integration
def test_loop_on_a_server_killed_mid_label_resumes_and_exports(db_url, ethanol_dir, tmp_path):
    """SIGKILL after the second committed label, rerun: every label once, on the server only."""
    from ase.db import connect

    from loops.oracles import KILL_AFTER_ENV

    write_structures(tmp_path / "pool.xyz", read_structures(ethanol_dir / "train.xyz")[:20])
    write_structures(tmp_path / "test.xyz", read_structures(ethanol_dir / "test_MD.xyz")[:5])
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("oed")), "loop", "run", "--pool", str(tmp_path / "pool.xyz"),
           "--test", str(tmp_path / "test.xyz"), "--out", str(out), "--init", "5", "--batch", "3",
           "--rounds", "1", "--strategy", "random", "--oracle", LEVEL, "--workers", "1", "--db", db_url]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, KILL_AFTER_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rows = list(connect(db_url).select())
    assert len(rows) == 2 and not (out / "labels.db").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "store.json").read_text())["run"]
    rows = list(connect(db_url).select(run=run))
    assert len(rows) == 8 and len({r.key for r in rows}) == 8  # 5 + 3, each labelled once
    assert not (out / "labels.db").exists()
    results = json.loads((out / "results.json").read_text())
    assert [r["n_labelled"] for r in results] == [5, 8]

    runner = CliRunner()
    status = runner.invoke(app, ["loop", "status", str(out)], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    assert f"8 labels, 0 failed ({db_url} (run {run[:8]}))" in status.output
    res = runner.invoke(app, ["loop", "export", str(out), "-o", str(tmp_path / "all.xyz")])
    assert res.exit_code == 0, res.output
    exported = read_structures(tmp_path / "all.xyz")
    assert len(exported) == 8 and all(REF_ENERGY in a.info and a.info["label_seconds"] > 0 for a in exported)
    res = runner.invoke(app, ["loop", "report", str(out)])
    assert res.exit_code == 0, res.output
    assert "8 labels, 0 failed" in (out / "report.md").read_text()
    # the same run without --db would label everything again into labels.db: refused
    res = runner.invoke(app, ["loop", "run", *cmd[3:-2]])
    assert res.exit_code != 0 and "keeps its labels at" in res.output


@pytest.mark.postgres
@pytest.mark.integration  # a full comparison with live GFN2-xTB labels
def test_compare_with_a_live_oracle_keeps_its_labels_on_the_server(db_url, ethanol_dir, tmp_path):
    """``oed compare --db``: the live oracle's labels go to the server, the cost table reads them there."""
    from ase.db import connect

    write_structures(tmp_path / "pool.xyz", read_structures(ethanol_dir / "train.xyz")[:12])
    write_structures(tmp_path / "test.xyz", read_structures(ethanol_dir / "test_MD.xyz")[:4])
    out = tmp_path / "cmp"
    args = ["compare", "--pool", str(tmp_path / "pool.xyz"), "--test", str(tmp_path / "test.xyz"), "--out", str(out),
            "--strategies", "random,fps", "--budgets", "4", "--seeds", "1", "--oracle", LEVEL, "--workers", "1",
            "--pool-fraction", "1.0", "--db", db_url]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "store.json").read_text())["run"]
    rows = list(connect(db_url).select(run=run))
    picked = {i for name in ("random", "fps") for i in json.loads(
        (out / "selections" / name / "seed0.json").read_text())["selected"][:4]}
    assert len(rows) == len({r.key for r in rows}) == len(picked)  # a pick shared by both strategies: one label
    assert not (out / "labels.db").exists()
    assert (out / "results.csv").exists()
    # a rerun is a resume from the server: nothing labelled again
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(list(connect(db_url).select(run=run))) == len(rows)
    res = runner.invoke(app, args[:-2])
    assert res.exit_code != 0 and "keeps its labels at" in res.output
    replay = [a if a != LEVEL else "pool" for a in args]
    replay[replay.index(str(out))] = str(tmp_path / "replay")
    res = runner.invoke(app, replay)  # the replayed pool has nothing to store
    assert res.exit_code != 0 and "nothing to store" in res.output
