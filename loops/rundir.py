"""Run directories: the settings a run was started with, and JSON state read back safely.

A loop or a comparison keeps all its state in one directory, so rerunning the same command
resumes it. The settings that fix the results are stored once (``config.json``); a rerun with
other settings is refused rather than mixed into the old results.
"""

from __future__ import annotations

import json
from pathlib import Path

from loops.errors import RunMismatchError
from oed.io import atomic_write_text


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
        raise RunMismatchError(
            f"{out} holds a {what} with other settings ({', '.join(diff)}); "
            "rerun with the same settings to resume, or choose another --out"
        )
