"""The campaign engine: one select → label → fit → score cycle under every loop and comparison.

A campaign is a sequence of rounds with cumulative budgets ``schedule = (k_0, k_1, …)``. Each
round asks the *candidate source* for candidates (a fixed pool today: the configurations it
may pick that are not picked yet), the *strategy* for ``k_r − picked`` new picks conditioned
on what is labelled (:mod:`loops.strategies`), the *oracle* for labels (through a
:class:`~loops.oracles.LabelBook`), the *model* for a fit, and scores it on the test sets (a
*cell*, :mod:`loops.cells`). ``oed loop run`` is one campaign; ``oed compare`` a grid of them
(strategy × seed; in one-shot mode the selection is label-free, made once for the largest
budget, and each budget's cell trains on its first k picks).

State, in the run directory shared by the campaigns of a run, written the moment it exists so
that a killed run resumes where it stopped:

- ``selections/<strategy>/seed<s>.json``   picks in order and the round sizes (before labelling)
- ``labels.db``                            labels and failures (ase.db), one committed row each
- ``cells/<strategy>/seed<s>/k<budget>.json``   one finished round: training picks and errors
- ``models/<strategy>/seed<s>/k<budget>/``  the fit's files (kept when asked, or when the next
  round's strategy needs the model)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loops.cells import CellTask, read_cell, run_cell
from loops.oracles import LabelBook
from loops.phases import PhaseJournal
from loops.rundir import read_json
from loops.strategies import Features, RoundContext
from oed.errors import InputError
from oed.io import atomic_write_text

__all__ = ["Campaign", "ModelRef", "headline", "test_sets", "train_on_design"]

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class ModelRef:
    """The model a campaign trains: registry name, settings (``None``: defaults) and seed.

    ``seed`` None keeps the seed the settings hold; an int overrides it per campaign.
    """

    name: str
    settings: Any = None
    seed: int | None = None
    committee: int = 0

    def resolved_settings(self):
        from loops.models import model_class

        return self.settings if self.settings is not None else model_class(self.name).settings_class()

    def make(self, seed: int | None = None):
        """A new model; with ``committee`` K ≥ 2 a :class:`~loops.committee.Committee` of K of them."""
        from loops.models import make_model

        seed = self.seed if seed is None else seed
        if self.committee >= 2:
            from loops.committee import Committee

            return Committee(self.name, self.settings, size=self.committee, seed=0 if seed is None else seed)
        return make_model(self.name, self.settings, seed=seed)


@dataclass
class Campaign:
    """One strategy and seed run as rounds over a candidate source (see the module notes).

    Parameters
    ----------
    out : Path
        Run directory (shared by the campaigns of a run).
    label : str
        Names the campaign's files: the strategy as written (``d-optimal@gap-kernel+forces``).
    seed : int
        Round r's selection uses ``seed + r``.
    allowed : array of int
        Pool indices this campaign may pick (the candidate source).
    strategy, first : strategy objects
        ``first`` picks round 0 (default ``strategy``): the initial design of a loop, or random
        for a strategy that needs a model before any exists.
    book : LabelBook
        Oracle and label store; ``book.frames`` is the (bare) pool.
    model : ModelRef
    e0s : dict or None
        Element → isolated-atom energy (eV); ``None``: fitted to each training set by least
        squares (:func:`loops.oracles.average_e0s`).
    tests : dict
        Test-set name → extxyz path; ``test_limit`` caps configurations per ``config_type``.
    schedule : tuple of int
        Cumulative budgets, increasing.
    ahead : bool
        One-shot: select ``schedule[-1]`` at once, label-free; cells use prefixes.
    keep_models : bool
        Keep every cell's model files.
    refinements : tuple of str
        Test-time refinements every cell is also scored with (:mod:`loops.refine`).
    features : Features
        Design blocks per feature space (shared between campaigns).
    """

    out: Path
    label: str
    seed: int
    allowed: np.ndarray
    strategy: Any
    book: LabelBook
    model: ModelRef
    e0s: dict | None
    tests: dict
    schedule: tuple[int, ...]
    features: Features
    first: Any = None
    ahead: bool = False
    test_limit: int | None = None
    keep_models: bool = False
    md_stability_steps: int = 0
    refinements: tuple[str, ...] = ()
    log: Log = _quiet
    _labels: dict = field(default_factory=dict, repr=False)

    @property
    def journal(self) -> PhaseJournal:
        """The run's phase journal (``phases.jsonl``), lines tagged with this campaign."""
        return PhaseJournal(self.out, f"{self.label}/seed{self.seed}")

    def __post_init__(self) -> None:
        if not self.schedule or any(b < 1 for b in self.schedule) or list(self.schedule) != sorted(set(self.schedule)):
            raise InputError(f"a campaign's budgets must be positive and increasing, got {self.schedule}")

    # -- state ------------------------------------------------------------------------------------
    @property
    def selection_path(self) -> Path:
        return Path(self.out) / "selections" / self.label / f"seed{self.seed}.json"

    def selected(self) -> list[int]:
        """Picks so far, in order (read from the run directory)."""
        return [int(i) for i in read_json(self.selection_path, {"selected": []})["selected"]]

    def rounds(self) -> list[int]:
        """Picks made in each round so far."""
        return [int(n) for n in read_json(self.selection_path, {}).get("rounds", [])]

    def _save(self, selected: list[int], rounds: list[int]) -> None:
        atomic_write_text(self.selection_path, json.dumps({"selected": selected, "rounds": rounds}))

    def _labelled(self, idx: Sequence[int], round: int) -> dict:
        """Labels of ``idx`` (None for failures), from the oracle where new."""
        missing = [i for i in idx if i not in self._labels]
        if missing:
            self._labels.update(self.book.labels(missing, round=round))
        return {i: self._labels[i] for i in idx}

    def _e0s(self, train: Sequence) -> dict:
        """The run's E0s, or (none given) E0s fitted to this training set alone."""
        if self.e0s is not None:
            return self.e0s
        from loops.oracles import average_e0s

        return average_e0s(train) if train else {}

    # -- the phases of a round ----------------------------------------------------------------------
    def select(self, r: int, selected: list[int], model=None) -> list[int]:
        """Extend ``selected`` to ``schedule[r]`` picks (or ``schedule[-1]`` ahead) and record them."""
        budget = self.schedule[-1] if self.ahead else self.schedule[r]
        need = budget - len(selected)
        remaining = np.setdiff1d(self.allowed, selected)
        if need <= 0 or len(remaining) == 0:
            return selected
        strategy = self.first if (self.first is not None and not selected) else self.strategy
        labels = {} if self.ahead else self._labelled(selected, r)
        ok = [i for i in selected if labels.get(i) is not None]
        ctx = RoundContext(pool=self.book.frames, labels={i: labels[i] for i in ok},
                           e0s=self._e0s([labels[i] for i in ok]),
                           seed=self.seed + r, features=self.features, model=model)
        t0 = time.perf_counter()
        picks = strategy.select(min(need, len(remaining)), remaining, ok, ctx)
        rounds = read_json(self.selection_path, {}).get("rounds", [])
        selected = selected + [int(i) for i in picks]
        self._save(selected, rounds + [len(picks)])
        self.log(f"{self.label}, seed {self.seed}: picked {len(picks)} of {len(remaining)} candidates "
                 f"in {time.perf_counter() - t0:.1f} s")
        return selected

    def task(self, r: int, selected: list[int], budget: int | None = None) -> CellTask | None:
        """The cell closing round ``r`` (labels what it needs), or None when it is finished.

        ``budget`` (default ``schedule[r]``) is the number of picks the cell trains on.

        Raises
        ------
        InputError
            Every label of the cell failed: nothing to fit.
        """
        budget = self.schedule[r] if budget is None else int(budget)
        picked = selected[:budget]
        if read_cell(self.out, self.label, self.seed, budget, picked) is not None:
            return None
        labels = self._labelled(picked, r)
        ok = [i for i in picked if labels[i] is not None]
        if not ok:
            raise InputError(f"{self.label}, seed {self.seed}, k={budget}: every label failed; nothing to fit "
                             f"(see {Path(self.out) / 'labels.db'})")
        train = tuple(labels[i] for i in ok)
        return CellTask(self.label, self.seed, budget, tuple(picked), len(picked) - len(ok),
                        train, self.model.name, self.model.resolved_settings(), self._e0s(train),
                        self.tests, self.test_limit, str(self.out), self.keep_models,
                        model_seed=self.model.seed, round=r, md_stability_steps=self.md_stability_steps,
                        refinements=tuple(self.refinements))

    def _selection_model(self, r: int, selected: list[int], kept):
        """The model the next selection needs, fitted on the labels of rounds < r."""
        name = getattr(self.strategy, "model", None)
        if name is None or not selected:
            return None
        prev = self.schedule[r - 1]
        if kept is not None and kept[0] == prev:
            return kept[1]
        labels = self._labelled(selected, r)
        train = [labels[i] for i in selected if labels[i] is not None]
        same = name == self.model.name
        model = (self.model.make() if same else ModelRef(name, seed=self.seed).make())
        where = ("" if same else f"selection/{name}/")
        workdir = Path(self.out) / "models" / f"{where}{self.label}" / f"seed{self.seed}" / f"k{prev}"
        model.fit(train, e0s=self._e0s(train), workdir=workdir)
        return model

    # -- the cycle --------------------------------------------------------------------------------
    def plan(self) -> list[int]:
        """One-shot: the label-free selection for the largest budget (made once, then read)."""
        return self.select(0, self.selected())

    def run(self, on_record: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Run (or resume) every round: select, label, fit, score. Returns the cell records.

        ``on_record(records)`` is called after each round with the records so far (the loop
        rewrites its results, labels file and learning curve there). The pool running out of
        candidates ends the campaign early, with a log line.
        """
        selected = self.selected()
        records, kept = [], None
        reuse = getattr(self.strategy, "model", None) == self.model.name
        for r, budget in enumerate(self.schedule):
            if len(selected) < (self.schedule[-1] if self.ahead else budget):
                if len(np.setdiff1d(self.allowed, selected)) == 0:
                    self.log(f"{self.label}, seed {self.seed}: the pool is exhausted after {len(selected)} picks")
                    break
                model = None if self.ahead else self._selection_model(r, selected, kept)
                with self.journal.phase("select", r) as c:
                    selected = self.select(r, selected, model)
                    c["selected"] = len(selected)
            with self.journal.phase("label", r) as c:
                task = self.task(r, selected)
                if task is not None:
                    c.update(labels=task.budget - task.n_failed, failed=task.n_failed)
            if task is None:
                records.append(read_cell(self.out, self.label, self.seed, budget))
                if on_record is not None:
                    on_record(records)
                continue
            fitted = None
            with self.journal.phase("fit", r):  # scoring included: run_cell fits and scores
                if (reuse and r + 1 < len(self.schedule)) or self.model.committee >= 2:
                    # the trained model also drives the next round's selection: keep it (and its files)
                    fitted = self.model.make().fit(list(task.train), e0s=task.e0s, workdir=task.workdir)
                    kept = (budget, fitted)
                records.append(run_cell(task, fitted=fitted))
            self.log(f"{self.label}, seed {self.seed}, k={budget}: " + headline(records[-1]))
            if on_record is not None:
                on_record(records)
        return records


    # -- exploring rounds ---------------------------------------------------------------------------
    def _round_model(self, budget: int, selected: list[int]):
        """The model fitted on the first ``budget`` picks: read from its files, else fitted again."""
        from loops.models import load_fitted

        workdir = Path(self.out) / "models" / self.label / f"seed{self.seed}" / f"k{budget}"
        model = None if self.model.committee >= 2 else \
            load_fitted(self.model.name, self.model.resolved_settings(), workdir)
        if model is None:  # a committee reads back the members whose files match (Committee.fit)
            labels = self._labelled(selected[:budget], 0)
            train = [labels[i] for i in selected[:budget] if labels[i] is not None]
            model = self.model.make().fit(train, e0s=self._e0s(train), workdir=workdir)
        return model

    def explore_run(self, source, *, n_rounds: int, batch: int, first: Sequence[int], seeds: Sequence[int] = (),
                    max_labels: int | None = None, stability=None,
                    on_record: Callable[[list[dict], dict], None] | None = None) -> tuple[list[dict], dict]:
        """Run (or resume) rounds whose candidates come from ``source`` (MD exploration).

        Round 0 labels ``first`` (the seed geometries, or an initial design from the pool). Each
        later round explores with the model of the round before (``source.candidates``), adds
        the pool's unpicked configurations (``self.allowed``) to the explored candidates, and
        picks at most ``batch`` of them with the strategy, conditioned on the labelled set.

        Stops after ``n_rounds`` rounds, at ``max_labels`` labels, when a round's exploration is
        converged (no frame reached ``trust_lo``, no trajectory stopped) or when no candidate is
        left; ``stop.json`` and the returned dict say which (``reason``, ``round``, ``detail``).

        ``stability(model) -> dict`` (optional) measures MD stability of each round's model;
        it is stored as ``stability/k<budget>.json`` and in the record's ``md_stability``.
        ``on_record(records, stop)`` is called after each round.
        """
        from loops.explore import stop_counts

        journal = self.journal
        selected, rounds = self.selected(), self.rounds()
        records: list[dict] = []
        model = None
        stop = {"reason": "rounds", "round": n_rounds, "detail": f"{n_rounds} rounds after round 0 done"}
        for r in range(n_rounds + 1):
            explored = source.record(r) if r > 0 else None
            if r >= len(rounds):
                if r == 0:
                    picks = [int(i) for i in first]
                else:
                    if max_labels is not None and len(selected) >= max_labels:
                        stop = {"reason": "budget", "round": r, "detail": f"{len(selected)} labels >= {max_labels}"}
                        break
                    model = model or self._round_model(len(selected), selected)
                    labels = self._labelled(selected, r)
                    ok = [i for i in selected if labels[i] is not None]
                    # MD starts from the seeds (DP-GEN's initial configurations), or from labelled pool
                    # configurations without seeds: never from explored frames, whose distortions a
                    # new trajectory would only carry further out (measured: bonds broke within 10 fs)
                    starts = list(seeds) or [i for i in ok if i < source.n_base] or ok
                    with journal.phase("explore", r) as c:
                        cand, explored = source.candidates(r, model, [self.book.frames[i] for i in starts], starts,
                                                           [labels[i] for i in ok], self.seed + r)
                        c.update(frames=explored["n_frames"], candidates=explored["n_candidates"],
                                 stopped=sum(stop_counts(explored).values()))
                    self.log(f"round {r}: explored {explored['n_frames']} frames in {len(explored['trajectories'])} "
                             f"trajectories ({explored['seconds']:.0f} s), {explored['n_candidates']} candidates, "
                             f"stopped: {stop_counts(explored) or 'none'}")
                    if explored["converged"]:
                        stop = {"reason": "converged", "round": r,
                                "detail": f"no frame reached trust_lo={explored['trust_lo']:g} in "
                                          f"{explored['md_steps']} steps of {explored['timestep_fs']:g} fs at "
                                          f"{', '.join(f'{t:g}' for t in explored['temperatures'])} K"}
                        break
                    cand = np.setdiff1d(np.union1d(cand, self.allowed), selected)
                    if len(cand) == 0:
                        stop = {"reason": "no-candidates", "round": r, "detail": "no candidate left to pick"}
                        break
                    k = min(batch, len(cand), max_labels - len(selected) if max_labels else batch)
                    ctx = RoundContext(pool=self.book.frames, labels={i: labels[i] for i in ok},
                                       e0s=self._e0s([labels[i] for i in ok]), seed=self.seed + r,
                                       features=self.features, model=model)
                    with journal.phase("select", r) as c:
                        picks = [int(i) for i in self.strategy.select(k, cand, ok, ctx)]
                        c["selected"] = len(picks)
                selected = selected + picks
                rounds = rounds + [len(picks)]
                self._save(selected, rounds)
            budget = int(sum(rounds[:r + 1]))
            with journal.phase("label", r) as c:
                task = self.task(r, selected, budget=budget)
                if task is not None:
                    c.update(labels=budget - task.n_failed, failed=task.n_failed)
            if task is None:
                record = read_cell(self.out, self.label, self.seed, budget)
                model = None  # read again (or refitted) only if a later round needs it
            else:
                with journal.phase("fit", r):
                    model = self.model.make().fit(list(task.train), e0s=task.e0s, workdir=task.workdir)
                with journal.phase("evaluate", r):
                    record = run_cell(task, fitted=model)
                self.log(f"round {r}, {budget} labels: " + headline(record))
            record = dict(record)
            if explored is not None:
                record["exploration"] = {k: explored[k] for k in ("n_frames", "n_candidates", "n_above_lo",
                                                                   "converged", "seconds", "trust_lo", "trust_hi")}
                record["exploration"]["stopped"] = stop_counts(explored)
            if stability is not None:
                path = Path(self.out) / "stability" / f"k{budget}.json"
                if path.exists():
                    record["md_stability"] = json.loads(path.read_text())
                else:
                    with journal.phase("evaluate", r):
                        model = model or self._round_model(budget, selected)
                        record["md_stability"] = stability(model)
                    atomic_write_text(path, json.dumps(record["md_stability"]))
            records.append(record)
            if on_record is not None:
                on_record(records, stop)
        atomic_write_text(Path(self.out) / "stop.json", json.dumps(stop))
        self.log(f"stopped: {stop['reason']} ({stop['detail']})")
        if on_record is not None:
            on_record(records, stop)
        return records, stop


def train_on_design(train: Sequence, *, out: Path, label: str, seed: int, model: ModelRef,
                    e0s: dict, tests: dict, test_limit: int | None = None, keep_models: bool = False) -> dict:
    """Fit and score a model on a training set chosen by hand: a one-round campaign.

    ``train`` holds labelled configurations (REF_energy eV, REF_forces eV/Å); they are replayed
    as the oracle and picked in order by a :class:`~loops.strategies.FixedStrategy`, so a design
    built outside the selectors (molecules × conformers, a held-out composition) is fitted, scored
    and recorded as every other cell (``out/cells/<label>/seed<seed>/k<n>.json``), and a rerun
    reads the finished cell instead of refitting. Returns the cell record.
    """
    from loops.oracles import ReplayOracle, bare
    from loops.strategies import FixedStrategy

    pool = [bare(a, i) for i, a in enumerate(train)]
    order = tuple(range(len(pool)))
    campaign = Campaign(out=Path(out), label=label, seed=seed, allowed=np.array(order, dtype=int),
                        strategy=FixedStrategy(label, order), book=LabelBook(ReplayOracle(train), None, pool),
                        model=model, e0s=e0s, tests=tests, schedule=(len(pool),), features=Features(pool),
                        ahead=True, test_limit=test_limit, keep_models=keep_models)
    return campaign.run()[0]


def test_sets(paths: Sequence[Path], limit: int | None, species: Sequence[str], *,
              level_of_theory: str | None = None, log: Log = _quiet) -> dict[str, str]:
    """Test-set name (file stem) → resolved path, checked before any label is made.

    A file is scored on what it has (energies, forces); one with no label at all is refused
    here, by name, instead of after the labels and fits. When a file records a
    ``level_of_theory`` other than ``level_of_theory``, ``log`` gets a warning: its errors then
    measure the difference between the two levels as much as the model.

    Raises
    ------
    InputError
        No test file, two with the same name, or a file without any reference energy or forces.
    UnknownElementError
        A test file holds an element the pool lacks: a model fitted on the pool cannot predict it.
    """
    from loops.cells import load_test
    from oed.errors import UnknownElementError
    from oed.io import reference_energy, reference_forces

    if not paths:
        raise InputError("give at least one test file")
    names = [Path(p).stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"test files must have distinct names, repeated: {', '.join(dup)}")
    tests = {Path(p).stem: str(Path(p).resolve()) for p in paths}
    for name, path in tests.items():
        frames = load_test(path, limit)
        extra = sorted({s for a in frames for s in a.get_chemical_symbols()} - set(species))
        if extra:
            raise UnknownElementError(f"test set {name} contains {', '.join(extra)}, absent from the pool: "
                                      "a model fitted on the pool cannot predict it")
        if not any(reference_energy(a) is not None or reference_forces(a) is not None for a in frames):
            raise InputError(f"test file {path} has no reference energy or forces in any configuration: "
                             "nothing to score (label it first, e.g. with oed label)")
        levels = sorted({str(a.info["level_of_theory"]) for a in frames if "level_of_theory" in a.info})
        if level_of_theory and levels and not all(_same_level(lv, level_of_theory) for lv in levels):
            log(f"warning: test set {name} is labelled at {', '.join(levels)}, the training labels at "
                f"{level_of_theory}: its errors include the difference between the two levels")
    return tests


def _same_level(a: str, b: str) -> bool:
    """``pbe/def2-svp`` equals ``pyscf:pbe/def2-svp``: compare without the back-end prefix."""
    def strip(level: str) -> str:
        level = level.lower()
        return level.split(":", 1)[1] if level.startswith(("pyscf:", "xtb:")) else level

    return strip(a) == strip(b)


def headline(record: dict) -> str:
    """One line of a cell's errors: force MAE (meV/Å) where a test set has forces, else energy MAE."""
    parts = []
    for name, m in record["errors"].items():
        if "force_mae" in m:
            parts.append(f"{name} F-MAE {m['force_mae']:.1f} meV/Å")
        elif "energy_mae" in m:
            parts.append(f"{name} E-MAE {m['energy_mae']:.2f} meV/atom")
    return "; ".join(parts)
