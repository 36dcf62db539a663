"""Exploration as a candidate source: short MD with the current model, graded by its uncertainty.

Each exploring round runs Langevin trajectories (``ase.md.langevin``) with the model fitted so
far as the calculator, from the seed geometries (or the labelled pool configurations), at each of the asked temperatures.
Every ``sample_every`` steps the frame gets an uncertainty (:data:`UNCERTAINTIES`):

- ``gamma``: the MaxVol extrapolation grade of the frame's SOAP environments against the
  labelled set (:class:`oed.domain.ExtrapolationGrade`; Lysogorskiy et al., Phys. Rev. Mater. 7,
  043801, 2023), dimensionless, > 1 is extrapolation;
- ``gap-variance``: √(mean over atoms of the GAP's local predictive variance), eV/atom
  (quippy ``local_gap_variance``; Bartók & Csányi, IJQC 115, 1051, 2015);
- ``committee``: the committee's force deviation ε_F = maxᵢ √⟨|Fᵢ − ⟨Fᵢ⟩|²⟩, eV/Å
  (DP-GEN's model deviation; Zhang et al., Comput. Phys. Commun. 253, 107206, 2020).

Trust levels (DP-GEN's ``trust_lo``/``trust_hi``): frames with ``trust_lo ≤ u < trust_hi`` are
candidates; a trajectory stops at the first frame with ``u ≥ trust_hi`` (beyond it the model's
forces, and so the trajectory, are not worth following) and at the first physical failure
(:func:`physical_failure`), recorded with the reason. A round in which no frame reaches
``trust_lo`` is *converged* at that length and those temperatures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from oed.errors import InputError
from oed.io import atomic_write_text, read_structures, write_structures

__all__ = ["DEFAULT_TRUST", "ExploreSettings", "ExploreSource", "PhysicalLimits", "UNCERTAINTIES",
           "bonds_of", "explore", "md_stability", "physical_failure"]

#: Uncertainty → (what it is, unit).
UNCERTAINTIES = {
    "gamma": ("extrapolation grade γ of SOAP environments vs the labelled set", ""),
    "gap-variance": ("√ mean local GAP predictive variance", "eV/atom"),
    "committee": ("committee force deviation, max over atoms", "eV/Å"),
}
#: Default (trust_lo, trust_hi) per uncertainty. γ: 1 is the edge of the labelled set's span,
#: pacemaker and MLIP stop MD near 5–10; ε_F: DP-GEN's usual 0.05–0.30 eV/Å for molecules;
#: GAP σ: a few meV/atom is where a GAP fitted to tens of configurations starts to miss.
DEFAULT_TRUST = {"gamma": (1.5, 10.0), "gap-variance": (0.002, 0.02), "committee": (0.05, 0.30)}


@dataclass(frozen=True)
class PhysicalLimits:
    """When a trajectory has failed physically (the model, not chemistry, is to blame).

    Parameters
    ----------
    bond_stretch : float
        A bond of the starting geometry (pairs closer than 1.2 × their covalent-radii sum)
        longer than ``bond_stretch`` × that sum is broken.
    min_distance_fraction : float
        Two atoms closer than this × their covalent-radii sum collide.
    max_energy_change : float
        |E − E_start| / N above this (eV/atom) is a blow-up; so is any non-finite energy or force.
    """

    bond_stretch: float = 2.0
    min_distance_fraction: float = 0.5
    max_energy_change: float = 1.0


@dataclass(frozen=True)
class ExploreSettings:
    """Settings of one exploring round (see the module notes).

    Parameters
    ----------
    temperatures : tuple of float
        Langevin temperatures, K.
    md_steps : int
        Steps per trajectory; ``timestep_fs`` the time step, fs; ``friction`` the Langevin
        friction, 1/fs.
    max_md_steps : int or None
        Longer exploration before convergence is declared: a round whose MD finds nothing
        (no frame at ``trust_lo``, no trajectory stopped) is explored again with twice the steps,
        up to this many, and later rounds keep the longer trajectories — DP-GEN's stages of
        growing length, where a model that is converged on short runs is tried on longer ones
        (Zhang et al., Comput. Phys. Commun. 253, 107206, 2020). ``None``: no escalation.
    starts : int
        Trajectories per temperature, each from a random labelled or seed geometry.
    sample_every : int
        Steps between graded frames (the thinning: neighbouring MD frames are near copies).
    max_candidates : int
        At most this many candidates per round (evenly spread over the frames found), the set
        the strategy picks its batch from.
    uncertainty : str
        One of :data:`UNCERTAINTIES`.
    trust_lo, trust_hi : float or None
        Trust levels in the uncertainty's unit; ``None``: :data:`DEFAULT_TRUST`.
    limits : PhysicalLimits
    """

    temperatures: tuple[float, ...] = (300.0, 600.0)
    md_steps: int = 400
    max_md_steps: int | None = None
    timestep_fs: float = 0.5
    friction: float = 0.01
    starts: int = 4
    sample_every: int = 10
    max_candidates: int = 200
    uncertainty: str = "gamma"
    trust_lo: float | None = None
    trust_hi: float | None = None
    limits: PhysicalLimits = field(default_factory=PhysicalLimits)

    @property
    def trust(self) -> tuple[float, float]:
        lo, hi = DEFAULT_TRUST[self.uncertainty]
        return (lo if self.trust_lo is None else float(self.trust_lo),
                hi if self.trust_hi is None else float(self.trust_hi))

    def validate(self) -> None:
        """Raises InputError for a bad value, naming it."""
        if self.uncertainty not in UNCERTAINTIES:
            raise InputError(f"unknown uncertainty {self.uncertainty!r}; choose from {', '.join(UNCERTAINTIES)}")
        if not self.temperatures or any(not np.isfinite(t) or t <= 0 for t in self.temperatures):
            raise InputError(f"temperatures must be positive (K), got {list(self.temperatures)}")
        for name in ("md_steps", "starts", "sample_every", "max_candidates"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_md_steps is not None and int(self.max_md_steps) < int(self.md_steps):
            raise InputError(f"max_md_steps ({self.max_md_steps}) must be >= md_steps ({self.md_steps})")
        if not (0 < self.timestep_fs <= 5):
            raise InputError(f"timestep_fs must be in (0, 5] fs, got {self.timestep_fs}")
        if self.friction <= 0:
            raise InputError(f"friction must be > 0 (1/fs), got {self.friction}")
        lo, hi = self.trust
        if not (0 <= lo < hi):
            raise InputError(f"trust levels must satisfy 0 <= trust_lo < trust_hi, got {lo}, {hi}")

    def fingerprint(self) -> dict:
        out = asdict(self)
        if out["max_md_steps"] is None:  # runs from before escalation existed keep their fingerprint
            del out["max_md_steps"]
        return out


# ------------------------------------------------------------------ physical checks
def bonds_of(atoms: Atoms) -> np.ndarray:
    """Bonded pairs (i < j), shape (n_bonds, 2): closer than 1.2 × their covalent-radii sum."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, [1.2 * float(covalent_radii[z]) for z in atoms.numbers])
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1) if keep.any() else np.zeros((0, 2), dtype=int)


def _components(atoms: Atoms, factor: float) -> int:
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    # per-atom radii add up per pair: a pair is joined below factor × (r_cov,i + r_cov,j)
    i, j = neighbor_list("ij", atoms, [factor * float(covalent_radii[z]) for z in atoms.numbers])
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def physical_failure(atoms: Atoms, bonds: np.ndarray, energy_start: float, energy: float, forces: np.ndarray,
                     limits: PhysicalLimits = PhysicalLimits(), n_fragments_start: int = 1) -> str | None:
    """Why a frame is a physical failure — ``"energy"``, ``"close-contact"``, ``"fragments"`` or
    ``"bond"`` — or None.

    Parameters
    ----------
    atoms : ase.Atoms
    bonds : array (n_bonds, 2)
        The starting geometry's bonds (:func:`bonds_of`).
    energy_start, energy : float
        Potential energy at the start and now, eV.
    forces : array (n_atoms, 3)
        eV/Å.
    n_fragments_start : int
        Connected pieces of the start (at ``bond_stretch``): more now is fragments flying apart.
    """
    from ase.data import covalent_radii

    from loops.labelers import geometry_problem

    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return "energy"
    if abs(energy - energy_start) / len(atoms) > limits.max_energy_change:
        return "energy"
    if geometry_problem(atoms, limits.min_distance_fraction) is not None:
        return "close-contact"
    if len(atoms) > 1 and _components(atoms, limits.bond_stretch) > n_fragments_start:
        return "fragments"
    if len(bonds):
        d = atoms.get_distances(bonds[:, 0], bonds[:, 1], mic=bool(np.any(atoms.pbc)), vector=False)
        bound = limits.bond_stretch * (covalent_radii[atoms.numbers[bonds[:, 0]]]
                                       + covalent_radii[atoms.numbers[bonds[:, 1]]])
        if np.any(d > bound):
            return "bond"
    return None


# ------------------------------------------------------------------ uncertainty
class _Gamma:
    """γ of a frame against the labelled set (one fitted ExtrapolationGrade, per atom)."""

    def __init__(self, labelled: Sequence[Atoms]) -> None:
        from oed.domain import ExtrapolationGrade

        self.grade = ExtrapolationGrade(per_atom=True).fit(list(labelled))

    def __call__(self, atoms: Atoms, calc) -> float:
        return float(self.grade.transform([atoms])[0])


class _GapSigma:
    """√ mean local GAP variance of a frame, eV/atom (a second quippy object, variance on)."""

    def __init__(self, model) -> None:
        self.model = model
        self._pot = None

    def __getstate__(self) -> dict:
        return {"model": self.model, "_pot": None}

    def __call__(self, atoms: Atoms, calc) -> float:
        if self._pot is None:
            self._pot = self.model._new_quippy(calc_args="local_gap_variance")
        work = atoms.copy()
        work.calc = self._pot
        work.get_potential_energy()
        return float(np.sqrt(max(np.mean(self._pot.extra_results["atoms"]["local_gap_variance"]), 0.0)))


class _Committee:
    """The committee calculator's force deviation of the current step, eV/Å."""

    def __call__(self, atoms: Atoms, calc) -> float:
        return float(calc.results["force_deviation"])


def uncertainty_of(kind: str, model, labelled: Sequence[Atoms]):
    """The per-frame uncertainty function ``u(atoms, calc) -> float`` of ``kind``.

    Raises
    ------
    InputError
        ``gap-variance`` without a GAP, ``committee`` without a committee.
    """
    if kind == "gamma":
        return _Gamma(labelled)
    if kind == "gap-variance":
        if not hasattr(model, "predict_variance"):
            raise InputError("uncertainty gap-variance needs a GAP model (--model gap)")
        return _GapSigma(model)
    if kind == "committee":
        if not hasattr(model, "predict_uncertainty"):
            raise InputError("uncertainty committee needs a committee of models (--committee K with K >= 2)")
        return _Committee()
    raise InputError(f"unknown uncertainty {kind!r}; choose from {', '.join(UNCERTAINTIES)}")


# ------------------------------------------------------------------ trajectories
@dataclass(frozen=True)
class _Trajectory:
    start_id: int
    start: Atoms
    temperature: float
    steps: int
    seed: int
    settings: ExploreSettings
    model: Any
    uncertainty: Any
    trust_hi: float = float("inf")


def _run_trajectory(task: _Trajectory) -> tuple[list[Atoms], dict]:
    """Langevin MD from ``task.start``; graded frames and the trajectory's record."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    s, limits = task.settings, task.settings.limits
    rng = np.random.default_rng(task.seed)
    atoms = Atoms(task.start.numbers, task.start.positions, cell=task.start.cell, pbc=task.start.pbc)
    atoms.calc = task.model.as_calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=task.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    bonds = bonds_of(atoms)
    n_pieces = _components(atoms, limits.bond_stretch)
    e_start = float(atoms.get_potential_energy())
    dyn = Langevin(atoms, timestep=s.timestep_fs * units.fs, temperature_K=task.temperature,
                   friction=s.friction / units.fs, rng=rng, fixcm=False)
    frames, values, stopped, done = [], [], None, 0
    while done < task.steps:
        n = min(s.sample_every, task.steps - done)
        dyn.run(n)
        done += n
        energy, forces = float(atoms.get_potential_energy()), atoms.get_forces()
        stopped = physical_failure(atoms, bonds, e_start, energy, forces, limits, n_pieces)
        if stopped is not None:
            break
        u = float(task.uncertainty(atoms, atoms.calc))
        values.append(u)
        frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        frame.info.update(uncertainty=u, temperature=float(task.temperature), md_step=done,
                          start=int(task.start_id))
        frames.append(frame)
        if u >= task.trust_hi:
            stopped = "trust-hi"
            break
    record = {"start": int(task.start_id), "temperature": float(task.temperature), "steps": int(done),
              "time_fs": float(done * s.timestep_fs), "stopped": stopped,
              "max_uncertainty": float(max(values)) if values else None}
    return frames, record


def explore(model, starts: Sequence[Atoms], settings: ExploreSettings, labelled: Sequence[Atoms], *,
            seed: int, executor=None, start_ids: Sequence[int] | None = None) -> tuple[list[Atoms], dict]:
    """One exploring round: MD from ``starts`` with ``model``; returns candidates and the record.

    Parameters
    ----------
    model : fitted Model
        Drives the MD (``as_calculator()``).
    starts : list of ase.Atoms
        Geometries trajectories may start from; ``settings.starts`` are drawn per temperature.
    labelled : list of ase.Atoms
        The labelled set (γ is graded against it).
    seed : int
    executor : loops.parallel.Executor or None
        Runs trajectories in parallel (None: in this process).

    Returns
    -------
    candidates : list of ase.Atoms
        Frames with ``trust_lo ≤ u < trust_hi`` (info ``uncertainty``, ``temperature``,
        ``md_step``, ``start``), thinned to ``max_candidates``.
    record : dict
        As ``explore/round<r>.json`` (see :class:`ExploreSource`), without ``round``.
    """
    settings.validate()
    if not starts:
        raise InputError("exploration needs at least one starting geometry")
    lo, hi = settings.trust
    t0 = time.perf_counter()
    uncertainty = uncertainty_of(settings.uncertainty, model, labelled)
    rng = np.random.default_rng(seed)
    ids = list(range(len(starts))) if start_ids is None else list(start_ids)
    tasks = []
    for t in settings.temperatures:
        for j in rng.choice(len(starts), size=settings.starts, replace=len(starts) < settings.starts):
            tasks.append(_Trajectory(int(ids[j]), starts[j], float(t), settings.md_steps,
                                     int(rng.integers(2**31)), settings, model, uncertainty, hi))
    if executor is None:
        results = [_run_trajectory(t) for t in tasks]
    else:
        results = executor.map(_run_trajectory, tasks, description="exploring (MD)")
    frames = [f for fs, _ in results for f in fs]
    values = np.array([f.info["uncertainty"] for f in frames], dtype=float)
    cand = [f for f, u in zip(frames, values) if lo <= u < hi]
    if len(cand) > settings.max_candidates:
        keep = np.linspace(0, len(cand) - 1, settings.max_candidates).round().astype(int)
        cand = [cand[i] for i in keep]
    trajectories = [rec for _, rec in results]
    record = {
        "temperatures": [float(t) for t in settings.temperatures], "md_steps": settings.md_steps,
        "timestep_fs": settings.timestep_fs, "uncertainty": settings.uncertainty,
        "unit": UNCERTAINTIES[settings.uncertainty][1], "trust_lo": lo, "trust_hi": hi,
        "n_frames": len(frames), "n_candidates": len(cand),
        "n_above_lo": int(np.sum(values >= lo)), "converged": bool(np.all(values < lo)) and not any(
            r["stopped"] for r in trajectories),
        "seconds": round(time.perf_counter() - t0, 2), "trajectories": trajectories,
        "uncertainty_values": [round(float(v), 6) for v in values],
    }
    return cand, record


def stop_counts(record: dict) -> dict[str, int]:
    """Trajectories stopped, by reason."""
    out: dict[str, int] = {}
    for t in record["trajectories"]:
        if t["stopped"]:
            out[t["stopped"]] = out.get(t["stopped"], 0) + 1
    return out


# ------------------------------------------------------------------ the candidate source
class ExploreSource:
    """Explored candidates as part of a growing pool, on disk so a resumed run sees the same pool.

    Round r's candidates are ``explore/round<r>.xyz`` (written first) and its record
    ``explore/round<r>.json`` (written last: its presence marks the round explored). At start
    every explored round is appended to the pool in round order, so pool indices (the picks
    in ``selections/``) stay valid across restarts; an ``.xyz`` without its ``.json`` (killed
    between the two) is explored again.

    Parameters
    ----------
    out : Path
        Run directory.
    settings : ExploreSettings
    book : LabelBook
        Its ``frames`` is the pool; explored frames are appended (``book.extend``).
    features : Features
        Extended with the explored frames (selectors see them).
    executor : Executor or None
        Runs trajectories in parallel.
    """

    def __init__(self, out: Path, settings: ExploreSettings, book, features, *, executor=None,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.dir = Path(out) / "explore"
        self.settings, self.book, self.features, self.executor, self.log = settings, book, features, executor, log
        self.offsets: dict[int, tuple[int, int]] = {}
        #: Pool size before any explored frame: indices below it are seeds and pool configurations.
        self.n_base = len(book.frames)
        r = 1
        while (self.dir / f"round{r}.json").exists():
            frames = read_structures(self.dir / f"round{r}.xyz", what="explored frames") if \
                json.loads((self.dir / f"round{r}.json").read_text())["n_candidates"] else []
            self._append(r, frames)
            r += 1

    def _append(self, r: int, frames: list[Atoms]) -> None:
        start = len(self.book.frames)
        if frames:
            self.book.extend(frames)
            self.features.extend(frames)
        self.offsets[r] = (start, len(self.book.frames))

    def record(self, r: int) -> dict | None:
        path = self.dir / f"round{r}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def candidates(self, r: int, model, starts: Sequence[Atoms], start_ids: Sequence[int],
                   labelled: Sequence[Atoms], seed: int) -> tuple[np.ndarray, dict]:
        """Pool indices of round ``r``'s candidates and its record (exploring if not done yet)."""
        if r in self.offsets:
            a, b = self.offsets[r]
            return np.arange(a, b), self.record(r)
        previous = self.record(r - 1) if r > 1 else None
        steps = int(previous["md_steps"]) if previous else int(self.settings.md_steps)
        cap = self.settings.max_md_steps
        tried, seconds = [], 0.0
        while True:
            settings = replace(self.settings, md_steps=steps)
            cand, record = explore(model, starts, settings, labelled, seed=seed, executor=self.executor,
                                   start_ids=start_ids)
            seconds += record["seconds"]
            if not record["converged"] or cap is None or steps >= int(cap):
                break
            tried.append({"md_steps": steps, "n_frames": record["n_frames"], "seconds": record["seconds"]})
            self.log(f"round {r}: nothing above trust_lo in {steps} steps; exploring again with {min(2 * steps, cap)}")
            steps = min(2 * steps, int(cap))
        record["seconds"] = round(seconds, 2)
        if tried:
            record["escalated"] = tried  # the shorter explorations that found nothing
        for f in cand:
            f.info["explore_round"] = r
            f.info["config_type"] = f"explore_round{r}"
        record = {"round": r, **record}
        write_structures(self.dir / f"round{r}.xyz", cand)
        if cand:
            # the frames as a resumed run will read them: extxyz keeps 8 decimals, and a position
            # near a rounding boundary of structure_hash would otherwise get another key
            cand = read_structures(self.dir / f"round{r}.xyz", what="explored frames")
        atomic_write_text(self.dir / f"round{r}.json", json.dumps(record, indent=1))
        self._append(r, cand)
        a, b = self.offsets[r]
        return np.arange(a, b), record


# ------------------------------------------------------------------ MD stability
def md_stability(model, starts: Sequence[Atoms], *, temperature: float = 300.0, steps: int = 1000,
                 timestep_fs: float = 0.5, seed: int = 0, limits: PhysicalLimits = PhysicalLimits(),
                 executor=None) -> dict:
    """NVT (Langevin) MD with ``model`` from each of ``starts``: time to the first physical failure.

    A trajectory that never fails is counted at its full length (a lower bound: the mean is
    right-censored), and ``survived`` says how many did.

    Returns
    -------
    dict
        ``temperature_K``, ``steps``, ``timestep_fs``, ``time_fs`` (per trajectory), ``mean_fs``,
        ``std_fs``, ``survived`` (count), ``n`` and ``stopped`` {reason: count}.
    """
    settings = ExploreSettings(temperatures=(float(temperature),), md_steps=int(steps), timestep_fs=timestep_fs,
                               starts=1, sample_every=max(1, int(steps) // 100), limits=limits)
    rng = np.random.default_rng(seed)
    tasks = [_Trajectory(i, a, float(temperature), int(steps), int(rng.integers(2**31)), settings, model,
                         _Zero()) for i, a in enumerate(starts)]
    results = ([_run_trajectory(t) for t in tasks] if executor is None
               else executor.map(_run_trajectory, tasks, description="MD stability"))
    times = np.array([rec["time_fs"] for _, rec in results], dtype=float)
    stopped: dict[str, int] = {}
    for _, rec in results:
        if rec["stopped"]:
            stopped[rec["stopped"]] = stopped.get(rec["stopped"], 0) + 1
    return {"temperature_K": float(temperature), "steps": int(steps), "timestep_fs": float(timestep_fs),
            "time_fs": times.tolist(), "mean_fs": float(times.mean()) if len(times) else None,
            "std_fs": float(times.std()) if len(times) else None,
            "survived": int(sum(rec["stopped"] is None for _, rec in results)), "n": len(results),
            "stopped": stopped}


class _Zero:
    """No uncertainty (MD stability follows the trajectory to its end or failure)."""

    def __call__(self, atoms, calc) -> float:
        return 0.0
