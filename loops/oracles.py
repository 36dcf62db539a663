"""Oracles: where labels come from. A protocol as small as an ASE calculator.

An oracle has a ``name`` (its level of theory, e.g. ``"pyscf:pbe/def2-svp"``), labels
configurations, ``label(frames) -> list[LabelResult]`` (a labelled copy with ``REF_energy``
in eV and ``REF_forces`` in eV/Å, or a failure with its reason — never a wrong label), and
gives isolated-atom energies, ``e0s(species)``. Implementations:

- :class:`ReplayOracle` (``"pool"``): a labelled pool revealing a label only when asked;
- :class:`PySCFOracle` (``"pyscf:xc/basis"``), :class:`XTBOracle` (``"xtb:gfn2-xtb"``);
- :class:`CalculatorOracle` (``"ase:MODULE:CLASS[:JSON kwargs]"``): any ASE calculator.

:class:`LabelBook` puts an oracle behind an ase.db :class:`~loops.store.LabelStore`: each
label is committed the moment it exists, and a configuration with a row is never labelled again.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms

from loops.errors import CalculationFailed, SetupError
from loops.labelers import LabelResult, label_with
from loops.parallel import Executor
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, reference_energy, reference_forces, structure_hash

__all__ = ["LABEL_FAILED", "CalculatorOracle", "LabelBook", "Oracle", "PySCFOracle", "ReplayOracle", "XTBOracle",
           "bare", "make_oracle", "parse_oracle"]

#: info keys a bare configuration keeps (everything else could carry a label).
_KEPT_INFO = ("config_type", "charge")
#: ``atoms.info`` key marking a pool configuration whose label failed where the pool was made
#: (value: the reason); :class:`ReplayOracle` answers it with a recorded failure.
LABEL_FAILED = "label_failed"


@runtime_checkable
class Oracle(Protocol):
    """Structural type of a label source."""

    name: str

    def label(self, frames: Sequence[Atoms], *, on_result=None) -> list[LabelResult]:
        """One :class:`~loops.labelers.LabelResult` per configuration, in input order."""
        ...

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        """Isolated-atom energies (eV) at the oracle's level of theory."""
        ...


def bare(atoms: Atoms, index: int | None = None) -> Atoms:
    """A configuration with no label: numbers, positions, cell, pbc, ``config_type``, charge."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for key in _KEPT_INFO:
        if key in atoms.info:
            out.info[key] = atoms.info[key]
    if index is not None:
        out.info["oed_pool_index"] = int(index)
    return out


def _with_label(atoms: Atoms, energy: float, forces: np.ndarray, level: str) -> Atoms:
    out = atoms.copy()
    out.calc = None
    out.info.pop("energy", None)
    out.arrays.pop("forces", None)
    out.info[REF_ENERGY] = float(energy)
    out.arrays[REF_FORCES] = np.array(forces, dtype=float)
    out.info["level_of_theory"] = level
    return out


class ReplayOracle:
    """A labelled pool acting as the oracle: a label is revealed only when asked for.

    Configurations are found by structure hash, so a selector that only ever saw bare
    geometries (:func:`bare`) gets the published label of exactly what it picked;
    ``revealed_`` records the hashes handed out (the leak test reads it).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The labelled pool: every configuration with a reference energy (eV) and forces (eV/Å),
        or marked ``info[LABEL_FAILED] = reason``: a configuration whose label failed where the
        pool was made (``oed plan --proxy`` keeps such configurations, so that the pool's indices
        — and every seeded candidate draw — match the pool it stands for). Asking for a marked
        one returns a recorded failure with that reason.

    Raises
    ------
    InputError
        A configuration without an energy or forces and not marked as failed (its index is named).
    """

    name = "pool"

    def __init__(self, frames: Sequence[Atoms]) -> None:
        self._labels: dict[str, tuple[float, np.ndarray]] = {}
        self._failed: dict[str, str] = {}
        self._isolated: dict[str, float] = {}
        for i, atoms in enumerate(frames):
            if atoms.info.get(LABEL_FAILED):
                self._failed[structure_hash(atoms)] = str(atoms.info[LABEL_FAILED])
                continue
            e, f = reference_energy(atoms), reference_forces(atoms)
            if e is None or f is None:
                lacking = " and ".join(w for w, v in (("energy", e), ("forces", f)) if v is None)
                raise InputError(f"pool configuration {i} has no reference {lacking}: the pool oracle "
                                 "replays published labels (use --oracle pyscf:xc/basis to label live)")
            self._labels[structure_hash(atoms)] = (float(e), np.array(f, dtype=float))
            if len(atoms) == 1:
                self._isolated[atoms.get_chemical_symbols()[0]] = float(e)
        self.revealed_: set[str] = set()
        # The level the pool's frames state, when all state the same one (a pool labelled by oed
        # does): test sets are checked against it. Labels keep the oracle's name, "pool", as their
        # level in labels.db, so that existing run folders resume.
        labelled = [a for a in frames if not a.info.get(LABEL_FAILED)]
        levels = {str(a.info["level_of_theory"]) for a in labelled if "level_of_theory" in a.info}
        self.level_of_theory = levels.pop() if len(levels) == 1 and all(
            "level_of_theory" in a.info for a in labelled) else self.name

    def label(self, frames: Sequence[Atoms], *, on_result=None) -> list[LabelResult]:
        """Labelled copies of ``frames``; a configuration not in the pool is a recorded failure."""
        results = []
        for i, atoms in enumerate(frames):
            key = structure_hash(atoms)
            if key in self._labels:
                energy, forces = self._labels[key]
                self.revealed_.add(key)
                result = LabelResult(i, _with_label(atoms, energy, forces, self.name), None, 0.0)
            elif key in self._failed:
                result = LabelResult(i, None, f"failed where the pool was labelled: {self._failed[key]}", 0.0)
            else:
                result = LabelResult(i, None, "not in the replayed pool", 0.0)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        """Energies of the isolated atoms the pool holds.

        Raises
        ------
        InputError
            An element without a single-atom configuration in the pool.
        """
        missing = [s for s in species if s not in self._isolated]
        if missing:
            raise InputError(f"no isolated-atom energy (E0) for {', '.join(missing)}: give --e0s FILE "
                             "(extxyz of single atoms at the pool's level of theory)")
        return {s: self._isolated[s] for s in species}


class PySCFOracle:
    """DFT or Hartree–Fock labels from PySCF (:class:`loops.labelers.PySCFLabeler`).

    Parameters
    ----------
    method : str
        Level of theory ``"xc/basis"`` (checked now, before any work).
    executor : Executor
        Where the SCF runs go (local processes or Dask).
    **settings
        Other :class:`~loops.labelers.PySCFLabeler` parameters (``charge``, ``density_fit``, …).
    """

    def __init__(self, method: str = "pbe/def2-svp", *, executor: Executor = Executor(), **settings) -> None:
        from loops.labelers import parse_level_of_theory

        xc, basis = parse_level_of_theory(method)
        self.method = f"{xc}/{basis}"
        self.name = f"pyscf:{self.method}"
        self.executor, self.settings = executor, settings

    def check(self, frames: Sequence[Atoms]) -> None:
        """Raise SetupError, before any SCF, for a configuration these settings cannot label
        (periodic, a spin that does not fit, an element the basis set lacks)."""
        from loops.labelers import PySCFLabeler

        checker = PySCFLabeler(method=self.method, **self.settings)
        for atoms in frames:
            checker.check_atoms(atoms)

    def label(self, frames: Sequence[Atoms], *, on_result=None) -> list[LabelResult]:
        from loops.labelers import label_many

        ex = self.executor
        return label_many(list(frames), method=self.method, workers=ex.workers, client=ex.client,
                          progress=ex.progress, on_result=on_result, **self.settings)

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        from loops.labelers import isolated_atom_energies

        return isolated_atom_energies(species, method=self.method,
                                      density_fit=self.settings.get("density_fit", True))


class XTBOracle:
    """GFN-xTB labels from tblite (:mod:`loops.xtb`): a cheap stand-in for DFT (~1 % of its cost).

    Parameters
    ----------
    method : {"gfn2-xtb", "gfn1-xtb"}
    executor : Executor
        Local processes (xTB takes milliseconds: chunks are sent); Dask is not used for xTB.
    """

    def __init__(self, method: str = "gfn2-xtb", *, executor: Executor = Executor(), **settings) -> None:
        from loops.xtb import _canonical_method

        self.method = _canonical_method(method)
        self.name = f"xtb:{self.method}"
        self.executor, self.settings = executor, settings

    def check(self, frames: Sequence[Atoms]) -> None:
        """Raise SetupError, before any calculation, for a configuration xTB cannot label."""
        from loops.xtb import _check_atoms

        for atoms in frames:
            _check_atoms(atoms, int(self.settings.get("charge", 0)))

    def label(self, frames: Sequence[Atoms], *, on_result=None) -> list[LabelResult]:
        from loops.xtb import label_many_xtb

        return label_many_xtb(list(frames), method=self.method, workers=self.executor.workers,
                              progress=self.executor.progress, on_result=on_result, **self.settings)

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        from loops.xtb import isolated_atom_energies_xtb

        return isolated_atom_energies_xtb(species, method=self.method)


def _calculator_class(module: str, cls: str) -> type:
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"no ASE calculator {cls!r} in module {module!r}: {exc}") from None
    if not isinstance(found, type):
        raise InputError(f"{module}:{cls} is not a class")
    return found


def _label_with_calculator(index: int, atoms: Atoms, settings: dict) -> LabelResult:
    # Module level: runs in worker processes; the calculator is built there from its name.
    from ase.calculators.calculator import CalculationFailed as ASECalculationFailed

    start = time.perf_counter()
    work = atoms.copy()
    work.calc = _calculator_class(settings["module"], settings["cls"])(**settings["kwargs"])
    try:
        energy = float(work.get_potential_energy())
        forces = np.asarray(work.get_forces(), dtype=float)
    except (ASECalculationFailed, CalculationFailed) as exc:  # a run failure: recorded, the rest go on
        return LabelResult(index, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return LabelResult(index, None, "non-finite energy or forces", time.perf_counter() - start)
    return LabelResult(index, _with_label(atoms, energy, forces, settings["name"]), None,
                       time.perf_counter() - start)


class CalculatorOracle:
    """Labels from any ASE calculator, named by module and class (built afresh in each worker).

    Parameters
    ----------
    module, cls : str
        e.g. ``"ase.calculators.lj"``, ``"LennardJones"``.
    kwargs : dict or None
        Constructor keyword arguments (JSON-serialisable, e.g. ``{"sigma": 1.0}``).
    executor : Executor

    Raises
    ------
    InputError
        The class cannot be imported, or does not accept ``kwargs`` (checked now).

    Notes
    -----
    ``ase.calculators.calculator.CalculationFailed`` is recorded as a failure of that
    configuration; any other exception is a bug or a set-up error and stops the run.
    """

    def __init__(self, module: str, cls: str, kwargs: dict | None = None, *,
                 executor: Executor = Executor()) -> None:
        kwargs = dict(kwargs or {})
        calc_cls = _calculator_class(module, cls)
        known = set(getattr(calc_cls, "default_parameters", None) or ())
        unknown = sorted(set(kwargs) - known) if known else []
        try:
            if unknown:  # ASE calculators store unknown keywords silently: refuse them here
                raise TypeError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            calc = calc_cls(**kwargs)
        except TypeError as exc:
            raise InputError(f"{module}:{cls} does not take {kwargs}: {exc}") from None
        if "forces" not in getattr(calc, "implemented_properties", ()):
            raise InputError(f"{module}:{cls} does not compute forces: a label needs energy and forces")
        self.name = f"ase:{module}:{cls}" + (f":{json.dumps(kwargs, sort_keys=True)}" if kwargs else "")
        self._settings = {"module": module, "cls": cls, "kwargs": kwargs, "name": self.name}
        self.executor = executor

    def label(self, frames: Sequence[Atoms], *, on_result=None) -> list[LabelResult]:
        return label_with(_label_with_calculator, frames, self._settings, f"labelling with {self.name}",
                          self.executor, on_result)

    def e0s(self, species: Sequence[str]) -> dict[str, float]:
        """The calculator's energy of each free atom (eV).

        Raises
        ------
        SetupError
            The calculator fails on a free atom.
        """
        # a few free atoms: in this process, not worth starting workers for
        results = label_with(_label_with_calculator, [Atoms(s) for s in species], self._settings,
                             "free atoms", Executor(workers=1, progress=False))
        failed = [s for s, r in zip(species, results) if not r.ok]
        if failed:
            raise SetupError(f"{self.name} gives no energy for the free atom(s) {', '.join(failed)}")
        return {s: float(r.atoms.info[REF_ENERGY]) for s, r in zip(species, results)}


def parse_oracle(spec: str) -> tuple[str, tuple]:
    """Split an oracle string: ``"pool"``, ``"pyscf:xc/basis"``, ``"xtb:gfn2-xtb"`` or
    ``"ase:MODULE:CLASS[:JSON]"`` → (kind, arguments).

    Raises
    ------
    InputError
        Anything else, or JSON keyword arguments that are not an object.
    """
    if not isinstance(spec, str):
        raise InputError(f"oracle must be a string, got {spec!r}")
    if spec == "pool":
        return "pool", ()
    kind, _, rest = spec.partition(":")
    if kind in ("pyscf", "xtb") and rest:
        return kind, (rest,)
    if kind == "ase":
        module, _, tail = rest.partition(":")
        cls, _, text = tail.partition(":")
        if module and cls:
            try:
                kwargs = json.loads(text) if text else {}
            except json.JSONDecodeError as exc:
                raise InputError(f"oracle {spec!r}: keyword arguments are not valid JSON ({exc})") from None
            if not isinstance(kwargs, dict):
                raise InputError(f"oracle {spec!r}: keyword arguments must be a JSON object")
            return "ase", (module, cls, kwargs)
    raise InputError(f"oracle must be 'pool', 'pyscf:xc/basis', 'xtb:gfn2-xtb' or "
                     f"'ase:MODULE:CLASS[:JSON]', got {spec!r}")


def make_oracle(spec: str, *, pool: Sequence[Atoms] | None = None, executor: Executor = Executor()):
    """The oracle named by ``spec`` (see :func:`parse_oracle`); ``pool`` is needed for ``"pool"``.

    Raises
    ------
    InputError
        A bad spec, or ``"pool"`` without a labelled pool.
    SetupError
        A level of theory PySCF or tblite does not know.
    """
    kind, args = parse_oracle(spec)
    if kind == "pool":
        if pool is None:
            raise InputError("the 'pool' oracle replays a labelled pool: give one (--pool)")
        return ReplayOracle(pool)
    if kind == "pyscf":
        return PySCFOracle(args[0], executor=executor)
    if kind == "xtb":
        return XTBOracle(args[0], executor=executor)
    return CalculatorOracle(*args, executor=executor)


#: Test-only: SIGKILL this process after this many committed labels — a deterministic
#: interruption for the resume tests (``tests/test_loop.py``), instead of racing a timer.
KILL_AFTER_ENV = "OED_TEST_KILL_AFTER_LABELS"


def _kill_after_commits():
    limit = os.environ.get(KILL_AFTER_ENV)
    if not limit:
        return None
    count = [0]

    def kill() -> None:
        count[0] += 1
        if count[0] >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


class LabelBook:
    """An oracle behind an ase.db store: label what is missing, commit each label at once.

    Parameters
    ----------
    oracle : Oracle
    store_path : Path, str or None
        The ase.db file or database server URL (:func:`loops.store.run_store`); ``None`` keeps
        labels in memory (the replay oracle: nothing to save).
    frames : sequence of ase.Atoms
        Bare configurations addressed by index (a pool, or candidates found so far).
    run : str, optional
        The run id of a store shared by runs (:class:`~loops.store.LabelStore`).

    Notes
    -----
    A configuration with a row, label or failure, is never sent to the oracle again
    (structure hash as key), so a killed run resumes without relabelling.
    """

    def __init__(self, oracle: Oracle, store_path: Path | str | None, frames: Sequence[Atoms], *,
                 run: str | None = None) -> None:
        from loops.store import LabelStore

        self.oracle = oracle
        self.frames = list(frames)
        self._keys = [structure_hash(a) for a in self.frames]
        self._store = None if store_path is None else LabelStore(store_path, oracle.name, run=run)
        self._memory: dict[int, Atoms | None] = {}
        #: called after each committed label (the kill test stops the run there, see below).
        self.after_commit = _kill_after_commits()

    @classmethod
    def for_run(cls, oracle: Oracle, out: Path, frames: Sequence[Atoms], db: str | None = None) -> LabelBook:
        """The book of the run in ``out``: its ``labels.db``, the server ``db`` names, or memory (replay).

        Raises
        ------
        InputError
            ``db`` with the replay oracle (its labels are the pool's: nothing to store).
        RunMismatchError
            ``out`` keeps its labels in another store (:func:`loops.store.run_store`).
        """
        from loops.store import run_store

        if isinstance(oracle, ReplayOracle):
            if db is not None:
                raise InputError("--oracle pool replays the pool's own labels: there is nothing to store with --db")
            return cls(oracle, None, frames)
        where, run = run_store(out, db)
        return cls(oracle, where, frames, run=run)

    @property
    def store(self):
        """The :class:`~loops.store.LabelStore` behind the book (``None``: labels in memory, a replay)."""
        return self._store

    def extend(self, frames: Sequence[Atoms]) -> None:
        """Append candidates (explored frames): they are addressed by the next indices."""
        frames = list(frames)
        self.frames += frames
        self._keys += [structure_hash(a) for a in frames]

    def labels(self, indices: Iterable[int], *, round: int = 0) -> dict[int, Atoms | None]:
        """Labelled copies of ``frames[i]`` (``None`` where the oracle failed), labelling what is new."""
        indices = [int(i) for i in dict.fromkeys(indices)]
        if self._store is None:
            todo = [i for i in indices if i not in self._memory]
            if todo:
                for i, r in zip(todo, self.oracle.label([self.frames[i] for i in todo])):
                    self._memory[i] = r.atoms if r.ok else None
            return {i: self._memory[i] for i in indices}
        status = self._store.status()
        todo = [i for i in indices if self._keys[i] not in status]
        if todo:
            def commit(result: LabelResult) -> None:
                i = todo[result.index]
                self._store.add(self._keys[i], atoms=result.atoms if result.ok else self.frames[i],
                                pool_index=i, round=round, seconds=result.seconds, error=result.error)
                if self.after_commit is not None:
                    self.after_commit()

            self.oracle.label([self.frames[i] for i in todo], on_result=commit)
        wanted = {self._keys[i]: i for i in indices}
        found: dict[int, Atoms] = {}
        for atoms in self._store.labelled(keys=set(wanted)):
            i = wanted[structure_hash(atoms)]
            found[i] = _with_label(self.frames[i], atoms.info[REF_ENERGY], atoms.arrays[REF_FORCES],
                                   self.oracle.name)
        return {i: found.get(i) for i in indices}

    def labelled(self) -> list[Atoms]:
        """Every label in the store (for ``labelled.xyz``)."""
        return [] if self._store is None else self._store.labelled()

    def pending(self, indices: Iterable[int]) -> list[int]:
        """Indices without a row yet (what :meth:`labels` would send to the oracle)."""
        if self._store is None:
            return [int(i) for i in indices if int(i) not in self._memory]
        status = self._store.status()
        return [int(i) for i in indices if self._keys[int(i)] not in status]


def e0s_from_file(path: Path, species: Sequence[str]) -> dict[str, float]:
    """Isolated-atom energies (eV) from an extxyz of single atoms.

    Raises
    ------
    InputError
        An element of ``species`` without one.
    """
    from oed.io import read_structures

    e0s: dict[str, float] = {}
    for atoms in read_structures(path, what="isolated-atoms file"):
        energy = reference_energy(atoms)
        if len(atoms) == 1 and energy is not None:
            e0s[atoms.get_chemical_symbols()[0]] = float(energy)
    missing = [s for s in species if s not in e0s]
    if missing:
        raise InputError(f"{path} has no isolated-atom energy for {', '.join(missing)}")
    return {s: e0s[s] for s in species}


def average_e0s(frames: Sequence[Atoms]) -> dict[str, float]:
    """E0s (eV) fitted by least squares to the reference energies of ``frames``.

    Solves E(A) ≈ Σ_s n_s(A) E0_s for the element counts n_s — mace-torch's ``E0s="average"``.
    Where the compositions do not determine every E0 (a pool of one molecule), the
    minimum-norm solution is taken: the model then learns the rest of the energy.

    Raises
    ------
    InputError
        No configuration with a reference energy.
    """
    labelled = [a for a in frames if reference_energy(a) is not None]
    if not labelled:
        raise InputError("no reference energies to fit E0s to")
    species = sorted({s for a in labelled for s in a.get_chemical_symbols()})
    counts = np.array([[a.get_chemical_symbols().count(s) for s in species] for a in labelled], dtype=float)
    energies = np.array([reference_energy(a) for a in labelled], dtype=float)
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {s: float(v) for s, v in zip(species, e0)}


def resolve_e0s(oracle: Oracle, species: Sequence[str], *, e0s_file: Path | None = None,
                cache: Path | None = None, log=None) -> dict[str, float] | None:
    """E0s from ``e0s_file``, else from the oracle (cached in ``cache``, a JSON file).

    A replayed pool without isolated atoms gives ``None``: each training set then gets E0s
    fitted to its own labels (:func:`average_e0s`) — never to labels nobody picked — and
    ``log`` says so in one line.

    Raises
    ------
    InputError
        The file lacks an element.
    """
    if e0s_file is not None:
        return e0s_from_file(Path(e0s_file), species)
    if isinstance(oracle, ReplayOracle):
        try:
            return oracle.e0s(species)
        except InputError:
            if log is not None:
                log("no isolated atoms in the pool: E0s are fitted by least squares to each training set "
                    "(as mace-torch's E0s='average'); give --e0s FILE for isolated-atom energies")
            return None
    from loops.rundir import read_json
    from oed.io import atomic_write_text

    known: dict[str, Any] = read_json(cache, {}) if cache is not None else {}
    if known.get("oracle") != oracle.name:
        known = {"oracle": oracle.name, "e0s": {}}
    missing = [s for s in species if s not in known["e0s"]]
    if missing:
        if log is not None:
            log(f"isolated-atom energies (E0s) for {', '.join(missing)} with {oracle.name}")
        known["e0s"].update(oracle.e0s(missing))
        if cache is not None:
            atomic_write_text(cache, json.dumps(known, indent=2))
    return {s: float(known["e0s"][s]) for s in species}
