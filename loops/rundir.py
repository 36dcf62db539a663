"""Run directories: the settings a run was started with, and JSON state read back safely.

A loop or a comparison keeps all its state in one directory, so rerunning the same command
resumes it. The settings that fix the results are stored once (``config.json``); a rerun with
other settings is refused rather than mixed into the old results.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from loops.errors import RunLockedError, RunMismatchError
from oed.errors import InputError
from oed.io import atomic_write_text

#: The advisory lock a run holds on its directory for its whole life.
LOCK_NAME = ".oed.lock"


def check_output_file(path: Path, *, what: str = "output file", force: bool = True) -> Path:
    """Check, before any work, that ``path`` can be written as a file.

    Raises
    ------
    InputError
        ``path`` is a folder, a parent of it is a file, or (``force`` False) it exists already.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder: give a file name")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if path.exists() and not force:
        raise InputError(f"{what} {path} exists: give --force to overwrite it, or another name")
    return path


def check_run_dir(path: Path) -> Path:
    """Check, before any work, that ``path`` is (or can become) a run directory.

    Raises
    ------
    InputError
        ``path`` is a file, or a parent of it is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"run directory {path} is a file: give a folder (it is created when missing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"cannot create run directory {path}: {parent} is a file, not a folder")
    return path


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold an advisory lock on run directory ``out`` (created when missing) for a run's life.

    A second run on the same directory would label and fit everything twice; it is refused
    with the holder's PID. The lock (``fcntl.flock``) dies with its process, so a killed run
    leaves nothing that blocks the rerun.

    Raises
    ------
    RunLockedError
        Another live process holds the lock.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(f"{out} is in use by another oed run (PID {holder}); wait for it to finish, "
                                 "or stop it, then rerun to resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json(path: Path, default):
    """The JSON in ``path``, or ``default`` when the file does not exist.

    Raises
    ------
    RunMismatchError
        The file exists but is not valid JSON (it is never overwritten silently).
    """
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunMismatchError(f"{path} is corrupt ({exc}); remove it or use another --out") from exc


def check_settings(out: Path, fingerprint: dict, *, what: str = "run") -> None:
    """Record ``fingerprint`` in ``out/config.json``, or check it against the one recorded.

    Both are compared as JSON, so a tuple in the settings equals the list it was stored as.

    Raises
    ------
    RunMismatchError
        ``out`` holds a run whose settings differ (the differing keys are named).
    """
    path = Path(out) / "config.json"
    new = json.loads(json.dumps(fingerprint))
    old = read_json(path, None)
    if old is None:
        atomic_write_text(path, json.dumps(new, indent=2))
        return
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        def short(v) -> str:
            text = json.dumps(v)
            return text if len(text) <= 60 else text[:57] + "..."

        changes = "; ".join(f"{k}: {short(old.get(k))} → {short(new.get(k))}" for k in diff[:8])
        raise RunMismatchError(
            f"{out} holds a {what} with other settings ({', '.join(diff)}): {changes}; "
            "rerun with the same settings to resume, or choose another --out"
        )
