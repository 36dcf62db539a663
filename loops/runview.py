"""A loop's run directory read back: where it stands and its labels (the report: :mod:`loops.runreport`).

``oed loop status``, ``oed loop export`` and ``oed loop report`` only read what a run wrote
(the layout of :mod:`loops.loop` and :mod:`loops.loop_explore`): ``phases.jsonl`` (the phase
journal, :mod:`loops.phases`), ``labels.db`` (ase.db, :mod:`loops.store`), ``cells/``,
``selections/``, ``results.json``, ``explore/round<r>.json|xyz`` and ``stop.json``. Each may
be missing: a run killed mid-label has labels and no cell; an older run has no journal (then
the rounds and their times come from labels.db and the cells); a run on the replayed pool
(``--oracle pool``) has no labels.db (then its labels come from ``labelled.xyz``). Nothing
here writes into the run directory except the report the user asks for.

Units: errors in meV/Å (forces) and meV/atom (energies), times in s, labels in eV and eV/Å.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms

from loops.phases import PHASES, read_phases
from loops.store import read_store_record
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, read_structures, structure_hash

__all__ = ["Label", "RunView", "open_run", "round_rows", "export_labels", "headline_errors", "run_pid"]

#: Files or folders of which at least one marks a directory as a loop's run directory.
RUN_MARKERS = ("config.json", "labels.db", "store.json", "phases.jsonl", "results.json", "cells", "selections", "labelled.xyz")
#: ase.db key-value pairs of :class:`loops.store.LabelStore` that are columns, not label info.
_STORE_KEYS = {"key", "pool_index", "round", "ok", "seconds", "level_of_theory", "error", "run"}


@dataclass
class Label:
    """One configuration of the run's label store: a label (``atoms`` with REF_energy eV and
    REF_forces eV/Å) or a failure (``atoms`` the geometry, ``error`` the reason)."""

    key: str
    pool_index: int
    round: int
    ok: bool
    seconds: float
    level_of_theory: str
    error: str | None
    atoms: Atoms
    info: dict = field(default_factory=dict)  # the other stored pairs: config_type, scf_route, s2, …


@dataclass
class RunView:
    """Everything a run directory holds, read once (see :func:`open_run`)."""

    out: Path
    config: dict
    phases: list[dict]
    results: list[dict]
    cells: dict[int, dict]        # round → cell record (training picks, errors, fit/score seconds)
    labels: list[Label]
    explore: dict[int, dict]      # round → explore/round<r>.json
    selection: dict               # selections/<strategy>/seed<s>.json: "selected", "rounds"
    stop: dict | None
    pid: int | None               # the live process running in it, if any
    labels_from: str              # "labels.db", the server URL and run id, "labelled.xyz" or "none"

    @property
    def stored(self) -> bool:
        """True when the labels come from a store (labels.db or a server): failures and seconds included."""
        return self.labels_from not in ("labelled.xyz", "none")

    def rounds(self) -> list[int]:
        """Every round anything was recorded for, in order."""
        found = {int(p["round"]) for p in self.phases if "round" in p} | set(self.cells) | set(self.explore)
        found |= {int(r["round"]) for r in self.results} | {lab.round for lab in self.labels}
        found |= set(range(len(self.selection.get("rounds", []))))
        return sorted(found)

    def campaign(self) -> str:
        return f"{self.config.get('strategy', '?')}, seed {self.config.get('seed', '?')}"


def _json(path: Path, default):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is corrupt ({exc})") from None


def run_pid(out: Path) -> int | None:
    """PID of the process holding the run's lock (``.oed.lock``), or None when no run is live.

    Read-only: /proc/locks names the holder of the flock on the lock file's inode, so a PID
    left in the file by a killed run is not taken for a live one (no lock is ever tried,
    which could make a run starting at that moment refuse to start).
    """
    lock = Path(out) / ".oed.lock"
    if not lock.exists():
        return None
    st = lock.stat()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:  # not Linux: trust the PID in the file if that process lives
        try:
            pid = int(lock.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (ValueError, IndexError, OSError):
            return None
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK":
            dev = parts[5].split(":")
            if len(dev) == 3 and int(dev[2]) == st.st_ino and \
                    (int(dev[0], 16), int(dev[1], 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                return int(parts[4])
    return None


def _read_store(path: Path | str, run: str | None = None) -> list[Label]:
    from loops.store import connect_store

    labels = []
    for row in connect_store(path).select(**({} if run is None else {"run": run})):
        kv = dict(row.key_value_pairs)
        atoms = row.toatoms()
        atoms.calc = None
        ok = bool(kv.get("ok", False))
        if ok:
            atoms.info[REF_ENERGY] = float(row.energy)
            atoms.arrays[REF_FORCES] = row.forces.copy()
        labels.append(Label(key=str(kv.get("key", structure_hash(atoms))), pool_index=int(kv.get("pool_index", -1)),
                            round=int(kv.get("round", 0)), ok=ok, seconds=float(kv.get("seconds", 0.0)),
                            level_of_theory=str(kv.get("level_of_theory", "")), error=kv.get("error"),
                            atoms=atoms, info={k: v for k, v in kv.items() if k not in _STORE_KEYS}))
    labels.sort(key=lambda lab: (lab.round, lab.pool_index))
    return labels


def _read_labelled_xyz(path: Path, selection: dict) -> list[Label]:
    """Labels of a replayed-pool run (no labels.db): ``labelled.xyz``, rounds from the picks."""
    round_of, start = {}, 0
    picks = selection.get("selected", [])
    for r, n in enumerate(selection.get("rounds", [])):
        for i in picks[start:start + n]:
            round_of[int(i)] = r
        start += n
    labels = []
    for atoms in read_structures(path, what="labelled configurations"):
        index = int(atoms.info.get("oed_pool_index", -1))
        r = int(atoms.info.get("oed_round", round_of.get(index, 0)))
        info = {"config_type": atoms.info["config_type"]} if "config_type" in atoms.info else {}
        labels.append(Label(key=structure_hash(atoms), pool_index=index, round=r, ok=True, seconds=0.0,
                            level_of_theory=str(atoms.info.get("level_of_theory", "")), error=None,
                            atoms=atoms, info=info))
    return labels


def open_run(out: str | os.PathLike) -> RunView:
    """Read a loop's run directory.

    Raises
    ------
    InputError
        ``out`` does not exist, is not a folder, holds none of :data:`RUN_MARKERS` (not a run
        directory; a comparison's directory is named as such), or a state file is corrupt.
    """
    out = Path(out)
    if not out.exists():
        raise InputError(f"run directory {out} does not exist")
    if not out.is_dir():
        raise InputError(f"{out} is a file, not a run directory")
    if not any((out / m).exists() for m in RUN_MARKERS):
        hint = (" (it looks like an `oed compare` directory: read its summary.md)"
                if (out / "results.csv").exists() else "")
        raise InputError(f"{out} is not a run directory of `oed loop run`: it has none of "
                         f"{', '.join(RUN_MARKERS)}{hint}")
    config = _json(out / "config.json", {})
    results = _json(out / "results.json", [])
    if not isinstance(results, list):
        raise InputError(f"{out / 'results.json'} is not a list of rounds")
    strategy, seed = config.get("strategy"), config.get("seed")
    sel_dir = out / "selections"
    sel_path = sel_dir / str(strategy) / f"seed{seed}.json"
    if not sel_path.exists():  # no config.json: the one campaign there is
        found = sorted(sel_dir.glob("*/seed*.json")) if sel_dir.exists() else []
        sel_path = found[0] if found else sel_path
    selection = _json(sel_path, {})
    cells: dict[int, dict] = {}
    cell_dir = out / "cells" / sel_path.parent.name / sel_path.stem
    for path in sorted(cell_dir.glob("k*.json")) if cell_dir.exists() else []:
        rec = _json(path, None)
        if isinstance(rec, dict) and "errors" in rec:
            cells[int(rec.get("round", len(cells)))] = rec
    explore = {}
    for path in sorted((out / "explore").glob("round*.json")) if (out / "explore").exists() else []:
        rec = _json(path, None)
        if isinstance(rec, dict):
            explore[int(rec.get("round", path.stem[5:]))] = rec
    record = read_store_record(out)
    if record is not None:  # a run on a database server (loops.store); the password comes from libpq
        labels, source = _read_store(record["db"], record["run"]), f"{record['db']} (run {record['run'][:8]})"
    elif (out / "labels.db").exists():
        labels, source = _read_store(out / "labels.db"), "labels.db"
    elif (out / "labelled.xyz").exists():
        labels, source = _read_labelled_xyz(out / "labelled.xyz", selection), "labelled.xyz"
    else:
        labels, source = [], "none"
    return RunView(out=out, config=config, phases=read_phases(out), results=results, cells=cells, labels=labels,
                   explore=explore, selection=selection, stop=_json(out / "stop.json", None), pid=run_pid(out),
                   labels_from=source)


# ------------------------------------------------------------------ status
def headline_errors(errors: dict) -> dict[str, tuple[str, float]]:
    """Per whole test set (not its ``name:config_type`` parts): (metric, value) — force MAE in
    meV/Å where the set has forces, else energy MAE in meV/atom."""
    out = {}
    for name, m in errors.items():
        if ":" in name:
            continue
        if "force_mae" in m:
            out[name] = ("force_mae", float(m["force_mae"]))
        elif "energy_mae" in m:
            out[name] = ("energy_mae", float(m["energy_mae"]))
    return out


def _round_errors(view: RunView, r: int) -> dict:
    if r in view.cells:
        return view.cells[r]["errors"]
    for rec in view.results:
        if int(rec["round"]) == r:
            return rec.get("errors", {})
    return {}


def _phase_state(view: RunView, r: int, lines: list[dict], done: bool) -> str:
    stop = view.stop or {}
    if stop.get("round") == r and stop.get("reason") in ("converged", "no-candidates") and not done:
        return stop["reason"]
    if lines:
        last = lines[-1]
        phase, event = last.get("phase", "?"), last.get("event")
        if event == "failed":
            return f"failed in {phase}"
        if event == "start":
            return f"running: {phase}" if view.pid and last is view.phases[-1] else f"stopped in {phase}"
        if done:
            return "done"
        return f"running (after {phase})" if view.pid else f"stopped after {phase}"
    if done:
        return "done"
    # no journal: what the files say
    if any(lab.round == r for lab in view.labels):
        return "running: label" if view.pid else "stopped in label"
    return "running" if view.pid else "stopped after select"


def round_rows(view: RunView, now: float | None = None) -> list[dict]:
    """One dict per round (what ``oed loop status`` shows).

    Keys: ``round``; ``state`` ("done", "running: <phase>", "stopped in <phase>",
    "failed in <phase>", "converged", …); ``picked``; ``labels``/``failed`` (committed in that
    round, from the label store); ``n_labelled`` (cumulative training labels of its model, None
    before the fit); ``candidates`` (explored candidates, None for a pool round);
    ``errors`` ({test set: (metric, value)}, :func:`headline_errors`); ``seconds`` ({phase: s},
    a running phase counted up to ``now``) and ``running`` (that phase's name, or None);
    ``times_from`` ("journal" or "files": labelling time summed over labels, fit and score
    times of the cell).
    """
    now = time.time() if now is None else now
    rows = []
    picks = view.selection.get("rounds", [])
    for r in view.rounds():
        lines = [p for p in view.phases if p.get("round") == r]
        cell = view.cells.get(r)
        result = next((x for x in view.results if int(x["round"]) == r), None)
        done = cell is not None or result is not None
        mine = [lab for lab in view.labels if lab.round == r]
        failed = sum(not lab.ok for lab in mine)
        if not view.stored and cell is not None:  # replayed pool: failures only in cells
            prev = view.cells.get(r - 1, {}).get("n_failed", 0)
            failed = max(int(cell.get("n_failed", 0)) - int(prev), 0)
        seconds: dict[str, float] = {}
        running = None
        if view.phases:
            open_: dict[str, float] = {}
            for p in lines:
                name = p.get("phase")
                if p.get("event") == "start":
                    open_[name] = float(p.get("time", now))
                else:
                    seconds[name] = seconds.get(name, 0.0) + float(p.get("seconds", 0.0))
                    open_.pop(name, None)
            if lines and lines[-1].get("event") == "start" and view.pid and lines[-1] is view.phases[-1]:
                running = lines[-1]["phase"]
                seconds[running] = seconds.get(running, 0.0) + max(now - open_[running], 0.0)
            times_from = "journal"
        else:
            times_from = "files"
            if mine:
                seconds["label"] = sum(lab.seconds for lab in mine)
            if cell is not None:
                seconds["fit"] = float(cell.get("fit_seconds", 0.0))
                seconds["evaluate"] = float(cell.get("score_seconds", 0.0))
            if r in view.explore:
                seconds["explore"] = float(view.explore[r].get("seconds", 0.0))
        cand = view.explore.get(r, {}).get("n_candidates")
        if cand is None:
            cand = next((p.get("candidates") for p in reversed(lines)
                         if p.get("phase") == "explore" and "candidates" in p), None)
        n_lab = cell.get("n_labelled") if cell else (result or {}).get("n_labelled")
        rows.append({"round": r, "state": _phase_state(view, r, lines, done),
                     "picked": int(picks[r]) if r < len(picks) else None,
                     "labels": sum(lab.ok for lab in mine), "failed": failed, "n_labelled": n_lab,
                     "candidates": cand, "errors": headline_errors(_round_errors(view, r)),
                     "seconds": seconds, "running": running, "times_from": times_from})
    return rows


# ------------------------------------------------------------------ export
def _explored(view: RunView):
    """Finder of the explored candidate (``explore/round<r>.xyz``) a label came from: its info, or None.

    By structure hash first; then by geometry (same atoms, positions within 1e-5 Å), because
    a frame labelled from memory and the same frame read back from extxyz (8 decimals) can
    round differently at the hash's 1e-6 Å.
    """
    import numpy as np

    by_hash, by_numbers = {}, {}
    for r in sorted(view.explore):
        path = view.out / "explore" / f"round{r}.xyz"
        if not path.exists() or not view.explore[r].get("n_candidates"):
            continue
        for atoms in read_structures(path, what="explored frames"):
            info = {**atoms.info, "explore_round": int(atoms.info.get("explore_round", r)),
                    "uncertainty_kind": view.explore[r].get("uncertainty")}
            by_hash[structure_hash(atoms)] = info
            by_numbers.setdefault(tuple(atoms.numbers), []).append((atoms.positions, info))

    def find(key: str, atoms: Atoms) -> dict | None:
        if key in by_hash:
            return by_hash[key]
        for pos, info in by_numbers.get(tuple(atoms.numbers), []):
            if np.abs(pos - atoms.positions).max() < 1e-5:
                return info
        return None

    return find


def export_labels(view: RunView, path: str | os.PathLike) -> tuple[int, int]:
    """Write every successful label of the run as extxyz (atomically); returns (written, failed).

    Each configuration has ``REF_energy`` (eV), ``REF_forces`` (eV/Å), ``config_type`` (the
    pool's own where it had one, else ``explore_round<r>`` for an explored frame, ``seed`` for
    a seed geometry, ``pool`` otherwise), ``oed_round`` (the round it was labelled in),
    ``oed_pool_index``, ``level_of_theory``, ``label_seconds`` and the label's other stored info
    (``scf_route``, ``s2``, … where the labeller stored them); an explored frame also has
    ``uncertainty`` (at selection, in the unit of ``uncertainty_kind``), ``temperature`` (K) and
    ``explore_round``. Failures are left out (counted in the second number).

    Raises
    ------
    InputError
        The run has no labels at all (nothing to export).
    """
    from oed.io import write_structures

    if view.labels_from == "none":
        raise InputError(f"{view.out} has no labels yet (no labels.db or labelled.xyz)")
    explored = _explored(view)
    # round 0 of a run started from --init-from is its seed geometries (results say "seeds")
    seeds_round0 = any(r.get("strategy") == "seeds" and int(r["round"]) == 0 for r in view.results)
    frames = []
    for lab in view.labels:
        if not lab.ok:
            continue
        atoms = lab.atoms.copy()
        atoms.info.update({k: v for k, v in lab.info.items() if k != "config_type"})
        hit = explored(lab.key, lab.atoms)
        if lab.info.get("config_type") is not None:
            ctype = lab.info["config_type"]
        elif hit is not None:
            ctype = f"explore_round{hit['explore_round']}"
        else:
            ctype = "seed" if (seeds_round0 and lab.round == 0) else "pool"
        atoms.info.update(config_type=ctype, oed_round=lab.round, oed_pool_index=lab.pool_index,
                          level_of_theory=lab.level_of_theory or view.config.get("oracle", ""))
        if view.stored:
            atoms.info["label_seconds"] = lab.seconds
        if hit is not None:
            for k in ("uncertainty", "uncertainty_kind", "temperature", "explore_round"):
                if hit.get(k) is not None:
                    atoms.info[k] = hit[k]
        frames.append(atoms)
    write_structures(path, frames)
    return len(frames), sum(not lab.ok for lab in view.labels)


def failures(view: RunView) -> list[Label]:
    """The failed labels (round, pool index, reason), in round order."""
    return [lab for lab in view.labels if not lab.ok]


def phase_names(rows: list[dict]) -> list[str]:
    """The phases any round spent time in, in :data:`loops.phases.PHASES` order."""
    return [p for p in PHASES if any(p in row["seconds"] for row in rows)]
