"""Labels and failures of a run, in an ase.db keyed by structure hash.

The store is ``<run dir>/labels.db`` (SQLite) unless the run was started with a
database server URL (``oed loop run --db postgresql://user@host:port/dbname``, ase.db's
PostgreSQL backend): then every row also carries the run's id (``run``), so several runs
can share one database without seeing each other's labels, and ``<run dir>/store.json``
records the URL (never its password: libpq reads that from ``PGPASSWORD`` or ``~/.pgpass``)
and the id, for a resumed run and for ``oed loop status/export/report``.

Each label is written the moment it exists (one committed row per
configuration), so a stopped run loses at most the calculations in flight,
and a resumed run asks the store before it labels anything: a configuration
with a row, label or failure, is never sent to DFT again.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, atomic_write_text

#: The record of a run whose labels live on a database server.
STORE_RECORD = "store.json"
_SERVER_SCHEMES = ("postgresql", "postgres")

#: info keys copied into ase.db key-value pairs when they hold scalars; the SCF
#: route, fallback and ⟨S²⟩ of a PySCF label (loops.labelers) among them.
_KEPT_INFO = ("config_type", "scf_route", "scf_fallback", "s2")


def is_server_url(db) -> bool:
    """True for a database server URL (``postgresql://…``), False for a file path."""
    return isinstance(db, str) and urlsplit(db).scheme in _SERVER_SCHEMES


def check_db_url(db: str | None) -> None:
    """Raise InputError unless ``db`` is ``None`` or a database server URL (``--db``)."""
    if db is not None and not is_server_url(db):
        raise InputError(f"--db takes a database server URL (postgresql://user@host:port/dbname), not {db!r}; "
                         "without --db the labels go to DIR/labels.db")


def redact(url: str) -> str:
    """``url`` without its password (what may be written to disk or printed)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_store(out: str | os.PathLike, db: str | None) -> tuple[str | Path, str | None]:
    """Where the run in ``out`` keeps its labels: ``(out/labels.db, None)`` or ``(URL, run id)``.

    A first run with a server URL gets a new run id, recorded in ``out/store.json``;
    a resumed run must name the same store it started with.

    Raises
    ------
    RunMismatchError
        ``out`` keeps its labels elsewhere than ``db`` says (the two are named).
    InputError
        ``db`` is neither ``None`` nor a ``postgresql://`` URL.
    """
    from loops.errors import RunMismatchError

    out = Path(out)
    check_db_url(db)
    record = read_store_record(out)
    if record is None:
        if db is None:
            return out / "labels.db", None
        if (out / "labels.db").exists():
            raise RunMismatchError(f"{out} keeps its labels in {out / 'labels.db'}; rerun without --db to resume, "
                                   "or choose another --out")
        record = {"db": redact(db), "run": uuid.uuid4().hex}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / STORE_RECORD, json.dumps(record, indent=2))
        return db, record["run"]
    if db is None or redact(db) != record["db"]:
        raise RunMismatchError(f"{out} keeps its labels at {record['db']} (run {record['run']}), not "
                               f"{'in DIR/labels.db' if db is None else redact(db)}; rerun with --db {record['db']} "
                               "to resume, or choose another --out")
    return db, record["run"]


def read_store_record(out: str | os.PathLike) -> dict | None:
    """``{"db": URL, "run": id}`` of a run on a database server, ``None`` for a run on labels.db.

    Raises
    ------
    InputError
        ``store.json`` is corrupt.
    """
    path = Path(out) / STORE_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not (is_server_url(record["db"]) and isinstance(record["run"], str)):
            raise ValueError("no server URL and run id")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is corrupt ({exc}); it names the database holding this run's labels") from None
    return record


def connect_store(db: str | os.PathLike):
    """An ase.db connection: a SQLite file (created when missing) or a PostgreSQL server.

    Raises
    ------
    InputError
        The server backend is not installed (``pip install 'oed[postgres]'``), or the server
        cannot be reached (its message, the URL without password).
    """
    from ase.db import connect

    if not is_server_url(db):
        return connect(str(db), type="db", append=True)
    try:
        import ase_db_backends.postgresql  # noqa: F401  (ase.db's PostgreSQL backend)
    except ImportError as exc:
        raise InputError(f"a PostgreSQL store needs psycopg2 and ase-db-backends ({exc}): "
                         "pip install 'oed[postgres]'") from None
    import psycopg2

    conn = connect(db, type="postgresql")
    try:
        conn.count()  # connects and creates the tables: a wrong URL fails here, not mid-label
    except psycopg2.Error as exc:
        raise InputError(f"cannot use the database {redact(db)}: {str(exc).strip()}") from None
    return conn


class LabelStore:
    """Labelled configurations of one level of theory.

    Parameters
    ----------
    path : path-like or str
        The ase.db file (SQLite; created when missing), or a ``postgresql://`` URL.
    level_of_theory : str
        Labels of another level of theory in the same file are ignored.
    run : str, optional
        Only rows of this run id are seen, and new rows carry it (a store shared by runs).

    Rows carry ``key`` (structure hash), ``pool_index``, ``round``,
    ``level_of_theory``, ``ok`` (bool), ``seconds`` and, for a failure,
    ``error``; labelled rows carry energy (eV) and forces (eV/Å).
    """

    def __init__(self, path: str | os.PathLike, level_of_theory: str, *, run: str | None = None) -> None:
        self.path = path if is_server_url(path) else Path(path)
        self.level_of_theory = level_of_theory
        self.run = run
        self._db = connect_store(path)
        self._where = {"level_of_theory": level_of_theory, **({} if run is None else {"run": run})}

    def _rows(self):
        return self._db.select(**self._where)

    def status(self) -> dict[str, bool]:
        """Structure hash → True (labelled) or False (failed) for every row."""
        return {row.key: bool(row.ok) for row in self._rows()}

    def add(
        self,
        key: str,
        *,
        atoms: Atoms,
        pool_index: int,
        round: int,
        seconds: float,
        error: str | None = None,
    ) -> None:
        """Commit one label (``atoms`` with REF_energy/REF_forces) or one failure.

        Raises
        ------
        ValueError
            If a labelled ``atoms`` lacks REF_energy or REF_forces.
        """
        row = atoms.copy()
        kv = {
            "key": key,
            "pool_index": int(pool_index),
            "round": int(round),
            "level_of_theory": self.level_of_theory,
            "ok": error is None,
            "seconds": float(seconds),
            **({} if self.run is None else {"run": self.run}),
        }
        for name in _KEPT_INFO:
            value = atoms.info.get(name)
            if isinstance(value, (str, int, float)):
                kv[name] = value
        if error is None:
            if REF_ENERGY not in atoms.info or REF_FORCES not in atoms.arrays:
                raise ValueError("a label needs info['REF_energy'] and arrays['REF_forces']")
            row.calc = SinglePointCalculator(
                row, energy=float(atoms.info[REF_ENERGY]), forces=np.asarray(atoms.arrays[REF_FORCES])
            )
        else:
            kv["error"] = str(error)[:500]
        # ase.db keeps info outside key-value pairs only under `data`; the
        # labels live in the calculator columns, so strip them from arrays.
        row.arrays.pop(REF_FORCES, None)
        row.info = {}
        self._db.write(row, **kv)

    def labelled(self, keys=None) -> list[Atoms]:
        """Labelled configurations (REF_energy/REF_forces), optionally only those in ``keys``.

        Ordered by round, then pool index: a refit sees the same training file
        whatever order the labels arrived in.
        """
        wanted = None if keys is None else set(keys)
        rows = [r for r in self._rows() if r.ok and (wanted is None or r.key in wanted)]
        rows.sort(key=lambda r: (r.round, r.pool_index))
        frames = []
        for row in rows:
            atoms = row.toatoms()
            atoms.info[REF_ENERGY] = float(row.energy)
            atoms.arrays[REF_FORCES] = np.array(row.forces)
            atoms.info["oed_pool_index"] = int(row.pool_index)
            atoms.info["oed_round"] = int(row.round)
            atoms.info["level_of_theory"] = self.level_of_theory
            if "config_type" in row:
                atoms.info["config_type"] = row.config_type
            atoms.calc = None
            frames.append(atoms)
        return frames

    def label_seconds(self) -> list[float]:
        """Wall seconds of every successful label in the store (this level of theory and run)."""
        return [float(row.get("seconds", 0.0)) for row in self._rows() if row.ok]

    def __len__(self) -> int:
        return self._db.count(**self._where)
