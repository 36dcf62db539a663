"""The phase journal of a run: each phase of each round recorded as it starts and ends.

``phases.jsonl`` in the run directory holds one JSON object per line, appended and flushed to
disk at once, so a run killed with SIGKILL keeps every line written before the kill (at most
the line being written is torn; :func:`read_phases` skips it). A phase is one of
:data:`PHASES`; each line has

- ``phase``, ``round``, ``campaign`` (the strategy label and seed, ``"d-optimal/seed0"``)
- ``event``: ``"start"``, ``"end"`` or ``"failed"`` (with ``error``)
- ``time``: seconds since the epoch; ``seconds``: wall time of the phase (end/failed only)
- whatever counts the phase reports (``labels``, ``failed``, ``candidates``, …)

``oed loop status`` reads it to show where a run is and what each phase cost; a phase with a
start and no end is the one the run was in when it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PHASES", "PhaseJournal", "read_phases"]

#: The phases of a round, in order.
PHASES = ("explore", "select", "label", "fit", "evaluate")
FILE = "phases.jsonl"


class PhaseJournal:
    """Append-only journal of phases in ``out/phases.jsonl`` (see the module notes).

    Parameters
    ----------
    out : Path or None
        Run directory; ``None`` records nothing (a campaign without a directory of its own).
    campaign : str
        Names the campaign the lines belong to.
    """

    def __init__(self, out: Path | None, campaign: str = "") -> None:
        self.path = None if out is None else Path(out) / FILE
        self.campaign = campaign

    def write(self, **record) -> None:
        """Append one line and flush it to disk."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"campaign": self.campaign, "time": time.time(), **record}, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    @contextlib.contextmanager
    def phase(self, name: str, round: int, **info) -> Iterator[dict]:
        """Record ``name`` of ``round`` around a block; the block may add counts to the dict it gets.

        Raises
        ------
        ValueError
            ``name`` not one of :data:`PHASES`.
        """
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        counts: dict = dict(info)
        self.write(phase=name, round=int(round), event="start", **info)
        t0 = time.perf_counter()
        try:
            yield counts
        except BaseException as exc:
            self.write(phase=name, round=int(round), event="failed", seconds=time.perf_counter() - t0,
                       error=f"{type(exc).__name__}: {exc}"[:500], **counts)
            raise
        self.write(phase=name, round=int(round), event="end", seconds=time.perf_counter() - t0, **counts)


def read_phases(out: Path) -> list[dict]:
    """Every complete line of ``out/phases.jsonl`` in order (``[]`` without a journal)."""
    path = Path(out) / FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the torn last line of a killed run
    return records
