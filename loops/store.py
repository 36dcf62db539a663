"""Labels and failures of a run, in an ase.db (SQLite) keyed by structure hash.

Each label is written the moment it exists (one committed row per
configuration), so a stopped run loses at most the calculations in flight,
and a resumed run asks the store before it labels anything: a configuration
with a row, label or failure, is never sent to DFT again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from oed.io import REF_ENERGY, REF_FORCES

#: info keys copied into ase.db key-value pairs when they hold scalars; the SCF
#: route, fallback and ⟨S²⟩ of a PySCF label (loops.labelers) among them.
_KEPT_INFO = ("config_type", "scf_route", "scf_fallback", "s2")


class LabelStore:
    """Labelled configurations of one level of theory.

    Parameters
    ----------
    path : path-like
        The ase.db file (SQLite; created when missing).
    level_of_theory : str
        Labels of another level of theory in the same file are ignored.

    Rows carry ``key`` (structure hash), ``pool_index``, ``round``,
    ``level_of_theory``, ``ok`` (bool), ``seconds`` and, for a failure,
    ``error``; labelled rows carry energy (eV) and forces (eV/Å).
    """

    def __init__(self, path: str | os.PathLike, level_of_theory: str) -> None:
        from ase.db import connect

        self.path = Path(path)
        self.level_of_theory = level_of_theory
        self._db = connect(str(self.path), type="db", append=True)

    def _rows(self):
        return self._db.select(level_of_theory=self.level_of_theory)

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

    def __len__(self) -> int:
        return self._db.count(level_of_theory=self.level_of_theory)
