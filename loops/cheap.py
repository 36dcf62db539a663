"""Cheap-oracle labels of pool configurations: a low-fidelity surface for selection, never for training.

A strategy that reads a cheap surface (:mod:`loops.lfab`: bias-aware selection after Vinod &
Zaspel, arXiv:2508.15577) labels the candidates with a method costing about 1 % of the target
level — GFN2-xTB through tblite (:mod:`loops.xtb`) against PBE/def2-SVP — and picks where the
model disagrees with it. Those labels are not the target: :class:`CheapLabels` keeps them in an
ase.db of their own (``<run dir>/cheap_labels.db``, beside but apart from ``labels.db``), so
that they cannot reach a DFT training set, and accounts for what they cost so that a comparison
can charge them to the strategy (:func:`account`: ``oed compare``'s cell records, ``cheap_cost.csv``
and the label-cost table of ``summary.md``, in DFT-label equivalents).

Storage and resumption are the oracle machinery's (:class:`~loops.oracles.LabelBook` over a
:class:`~loops.store.LabelStore`): one committed row per configuration, keyed by structure hash,
with the labelling seconds (:attr:`loops.labelers.LabelResult.seconds`). A configuration with a
row — label or failure — is never sent to the cheap oracle again: a resumed selection computes
nothing new, and a failed cheap label stays failed (its candidate simply has no cheap label).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from loops.oracles import LabelBook, make_oracle
from loops.parallel import Executor
from oed.io import REF_ENERGY, REF_FORCES, atomic_write_text, structure_hash

__all__ = ["CHEAP_DB", "DEFAULT_CHEAP_ORACLE", "DFT_LABEL_SECONDS", "CheapCost", "CheapLabels", "account", "cost_table",
           "dft_label_seconds"]

#: File name of the cheap labels inside a run directory (never ``labels.db``).
CHEAP_DB = "cheap_labels.db"
#: The cheap oracle by default: GFN2-xTB (Bannwarth, Ehlert & Grimme, JCTC 15, 1652, 2019).
DEFAULT_CHEAP_ORACLE = "xtb:gfn2-xtb"


@dataclass(frozen=True)
class CheapCost:
    """What a set of cheap labels cost.

    Attributes
    ----------
    n_labels : int
        Cheap calculations, failures included (their time was spent too).
    n_failed : int
        Of which failed (no label).
    seconds : float
        Their summed wall seconds, as the labeller measured each one (s).
    """

    n_labels: int
    n_failed: int
    seconds: float


class CheapLabels:
    """Cheap-oracle energies and forces of pool configurations, computed once, stored apart.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The bare pool, addressed by index (as ``LabelBook.frames``).
    path : path-like
        The ase.db file (created when missing); must not be the run's ``labels.db``.
    oracle : str, default "xtb:gfn2-xtb"
        Cheap oracle (:func:`loops.oracles.make_oracle`; not ``"pool"``).
    executor : Executor, default one process, no progress bar
        Where the cheap labels are computed. One process by default: xTB takes ~10 ms per
        ethanol, and a strategy may run inside a worker process that cannot start others.

    Attributes
    ----------
    name : str
        The cheap oracle's level of theory (``"xtb:gfn2-xtb"``).
    n_computed_ : int
        Cheap calculations this object sent to the oracle (0 when everything was stored).

    Raises
    ------
    InputError
        ``oracle`` is ``"pool"`` or malformed, or ``path`` is named ``labels.db``.
    """

    def __init__(self, frames: Sequence[Atoms], path: str | os.PathLike, *, oracle: str = DEFAULT_CHEAP_ORACLE,
                 executor: Executor | None = None) -> None:
        from oed.errors import InputError

        if oracle == "pool":
            raise InputError("the cheap oracle must compute labels (e.g. xtb:gfn2-xtb), not replay the pool's")
        self.path = Path(path)
        if self.path.name == "labels.db":
            raise InputError(f"cheap labels must not share the DFT label store {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cheap = make_oracle(oracle, executor=executor or Executor(workers=1, progress=False))
        self.name = cheap.name
        self._book = LabelBook(cheap, self.path, frames)
        self.n_computed_ = 0

    def pending(self, indices: Iterable[int]) -> list[int]:
        """Indices without a row yet: what :meth:`ensure` would send to the cheap oracle."""
        return self._book.pending(indices)

    def ensure(self, indices: Iterable[int]) -> int:
        """Cheap-label the configurations of ``indices`` that have no row yet; returns how many.

        Raises
        ------
        SetupError
            A configuration the cheap oracle cannot label at all (a periodic one for xTB).
        """
        todo = self._book.pending(indices)
        if todo:
            self._book.labels(todo)
            self.n_computed_ += len(todo)
        return len(todo)

    def energies_forces(self, indices: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Cheap energies and forces of ``indices``, labelling what is missing first.

        Returns
        -------
        energies : ndarray, shape (n,)
            Total energies in eV; NaN where the cheap label failed.
        forces : list of (n_atoms_i, 3) ndarray or None
            Forces in eV/Å; None where the cheap label failed.
        """
        indices = [int(i) for i in indices]
        self.ensure(indices)
        found = self._book.labels(indices)
        energies = np.array([np.nan if found[i] is None else float(found[i].info[REF_ENERGY]) for i in indices])
        forces = [None if found[i] is None else np.asarray(found[i].arrays[REF_FORCES], dtype=float)
                  for i in indices]
        return energies, forces

    def cost(self, indices: Iterable[int] | None = None) -> CheapCost:
        """Cost of the stored cheap labels of ``indices`` (all rows when None), from the store.

        A configuration without a row counts nothing: call :meth:`ensure` first.
        """
        from ase.db import connect

        rows = {}
        if self.path.exists():
            for row in connect(str(self.path), type="db").select(level_of_theory=self.name):
                rows[row.key] = (bool(row.ok), float(row.get("seconds", 0.0)))
        if indices is not None:
            keys = {structure_hash(self._book.frames[int(i)]) for i in indices}
            rows = {k: v for k, v in rows.items() if k in keys}
        return CheapCost(n_labels=len(rows), n_failed=sum(not ok for ok, _ in rows.values()),
                         seconds=float(sum(s for _, s in rows.values())))


# -- what a comparison charges each strategy ------------------------------------------------------------
#: Seconds of one PBE/def2-SVP label of an ethanol configuration on 2 cores (PySCF, density fitting;
#: docs/design.md §6, DESIGN.md "Measured reference"): the DFT cost per label when none is measured.
DFT_LABEL_SECONDS = 8.0


def dft_label_seconds(labels_db, level_of_theory: str | None = None,
                      default: float = DFT_LABEL_SECONDS) -> tuple[float, str]:
    """Seconds per DFT label: the mean of the successful labels in ``labels_db``, else ``default``.

    ``labels_db`` is an ase.db file (read at ``level_of_theory``), a :class:`loops.store.LabelStore`
    (a file or a server; its own level of theory and run), or ``None``. Returns ``(seconds, source)`` with ``source`` ``"measured (n labels)"`` or ``"given"``.
    A replayed pool has no store (its labels cost nothing here): ``default`` then stands for what
    they cost.
    """
    seconds: list[float] = []
    if hasattr(labels_db, "label_seconds"):
        seconds = labels_db.label_seconds()
    elif labels_db is not None and Path(labels_db).exists():
        from loops.store import LabelStore

        seconds = LabelStore(labels_db, level_of_theory).label_seconds()
    seconds = [s for s in seconds if s > 0]
    if seconds:
        return float(np.mean(seconds)), f"measured ({len(seconds)} labels)"
    return float(default), "given"


def account(out: str | os.PathLike, campaigns, dft_seconds: float) -> list[dict]:
    """Charge each finished cell its cheap labels; write them into the cell records.

    A campaign whose strategy reads a cheap oracle (``cheap_cost(round)``, :mod:`loops.lfab`)
    is charged the cheap labels its selections up to the cell's round used; others are charged
    none. Each cell record (``cells/<strategy>/seed<s>/k<budget>.json``) gets ``cheap_labels``,
    ``cheap_failed`` and ``cheap_seconds``, rewritten atomically only when they change.

    Returns
    -------
    list of dict
        One row per finished cell: strategy, seed, budget, dft_labels (picks sent to the
        oracle, failures included), cheap_labels, cheap_failed, cheap_seconds (s),
        cheap_dft_equivalents (cheap_seconds / ``dft_seconds``) and total_dft_equivalents.
    """
    from loops.cells import cell_path, read_cell

    rows = []
    for campaign in campaigns:
        cost_of = getattr(campaign.strategy, "cheap_cost", None)
        for r, budget in enumerate(campaign.schedule):
            record = read_cell(Path(out), campaign.label, campaign.seed, budget)
            if record is None:
                continue
            cost = cost_of(r) if cost_of is not None else CheapCost(0, 0, 0.0)
            new = {"cheap_labels": cost.n_labels, "cheap_failed": cost.n_failed,
                   "cheap_seconds": round(cost.seconds, 4)}
            if any(record.get(k) != v for k, v in new.items()):
                record.update(new)
                atomic_write_text(cell_path(Path(out), campaign.label, campaign.seed, budget),
                                  json.dumps(record, indent=1))
            dft = int(record["n_labelled"]) + int(record.get("n_failed", 0))
            equiv = cost.seconds / dft_seconds
            rows.append({"strategy": campaign.label, "seed": campaign.seed, "budget": budget, "dft_labels": dft,
                         **new, "cheap_dft_equivalents": round(equiv, 4),
                         "total_dft_equivalents": round(dft + equiv, 4)})
    return rows


def cost_table(rows: list[dict], dft_seconds: float, source: str) -> str:
    """A Markdown section: DFT labels and cheap labels per strategy and budget (means over seeds)."""
    if not any(r["cheap_labels"] for r in rows):
        return ""
    by: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["strategy"], r["budget"]), []).append(r)
    title = (f"## Label cost (one DFT label = {dft_seconds:.3g} s, {source}; cheap labels in DFT-label "
             "equivalents = their seconds / that; means over seeds)")
    lines = ["", title, "",
             "| strategy | budget | DFT labels | cheap labels | cheap seconds | cheap in DFT labels | total in DFT labels |",
             "|---|---|---|---|---|---|---|"]
    for (strategy, budget), g in sorted(by.items()):
        mean = {k: float(np.mean([r[k] for r in g])) for k in ("dft_labels", "cheap_labels", "cheap_seconds",
                                                                "cheap_dft_equivalents", "total_dft_equivalents")}
        lines.append(f"| {strategy} | {budget} | {mean['dft_labels']:.0f} | {mean['cheap_labels']:.0f} | "
                     f"{mean['cheap_seconds']:.2f} | {mean['cheap_dft_equivalents']:.2f} | "
                     f"{mean['total_dft_equivalents']:.2f} |")
    return "\n".join(lines) + "\n"
