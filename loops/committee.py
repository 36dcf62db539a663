"""Committees of interatomic potentials: mean prediction and member spread (σ_E, σ_F).

A :class:`Committee` holds ``K`` models of one registered back-end (:mod:`loops.models`) that
differ by seed — GAP: gap_fit's ``rnd_seed`` (its random choice of sparse points); MACE: the
weight initialisation, batch order and validation split — and, by default, by a random
subsample of the training set. Its prediction is the members' mean; its uncertainty is their
spread:

- ``sigma_energy``: the standard deviation over members of the total energy (eV);
- ``sigma_force_max``: DP-GEN's model deviation ε_F = maxᵢ √⟨|Fᵢ − ⟨Fᵢ⟩|²⟩ (eV/Å), the
  largest over atoms ``i`` of the norm of the members' force standard-deviation vector
  (Zhang et al., Comput. Phys. Commun. 253, 107206, 2020); ``sigma_force_mean`` is its mean
  over atoms.

Averages over members are population averages (``ddof=0``), as in DP-GEN's definition.

Why subsample. Members fitted to the same data with only another seed agree wherever the data
pin the model down and also wherever their shared prior does, so their spread underestimates
the error away from the data. A small sparse GAP has almost nothing to vary: gap_fit caps
``n_sparse`` at the number of environments of a species, so with 50 ethanol configurations
(300 H, 100 C, 50 O environments against 1500 sparse points) every environment is a sparse
point whatever the seed, and seed-only members are the same model up to the round-off of its
ill-conditioned solve. Fitting each member on its own random fraction of the configurations
(sampling without replacement, so no configuration is counted twice) makes members disagree
where a configuration is supported by few training points, which is what the spread should
measure: the subsampled committee of Imbalzano et al., J. Chem. Phys. 154, 074102 (2021), who
also rescale its spread against validation errors (:mod:`loops.calibration`).

Measured (``GAPSettings()``, K = 4, the first 50 configurations of ``data/ethanol/train.xyz``,
every 10th of ``test_MD.xyz``, 100 frames; true error maxᵢ |ΔFᵢ|): with ``subsample=0.8``,
Spearman ρ(σ_F, error) = 0.48, 0.51 and 0.42 for committee seeds 0, 10 and 20, mean σ_F
0.15–0.20 eV/Å against a mean error of 0.34 eV/Å (RMS error / RMS σ_F = 1.7–2.3); with seeds
alone (``subsample=None``) mean σ_F 0.019 eV/Å, ρ = 0.36 and RMS error / RMS σ_F = 15.

Members are fitted in parallel through :class:`loops.parallel.Executor`, each in
``workdir/member<m>/``. After a successful fit a member writes ``committee_member.json`` with a
fingerprint of its back-end, settings, seed, E0s and training subset; a later :meth:`Committee.fit`
with the same inputs loads that member from its files instead of refitting it (GAP: from
``gap.xml``; back-ends without a loader, such as MACE today, are refitted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from loops.fitting import training_frames
from loops.models import make_model, model_class
from loops.parallel import Executor
from loops.settings import fingerprint_fields
from oed.errors import InputError, NotFittedError
from oed.io import REF_ENERGY, REF_FORCES, atomic_write_text, structure_hash

if TYPE_CHECKING:
    from oed.design import FeatureSpec

__all__ = ["MEMBER_FILE", "Committee", "CommitteeCalculator", "committee_spread"]

#: Written into a member's work directory after its fit succeeded (what it was fitted on).
MEMBER_FILE = "committee_member.json"


def committee_spread(energies: np.ndarray, forces: Sequence[np.ndarray], n_atoms: Sequence[int]) -> dict[str, Any]:
    """Mean and spread of member predictions.

    Parameters
    ----------
    energies : array, shape (K, n)
        Total energy of each of ``n`` configurations by each of ``K`` members, eV.
    forces : sequence of n arrays, each (K, n_atoms_i, 3)
        Member forces per configuration, eV/Å.
    n_atoms : sequence of int, length n

    Returns
    -------
    dict
        ``energy`` (n,) and ``forces`` (list of (n_atoms_i, 3)): the member means;
        ``sigma_energy`` (n,) eV; ``sigma_energy_per_atom`` (n,) eV/atom; ``sigma_force_max`` and
        ``sigma_force_mean`` (n,) eV/Å: the max and mean over atoms of √⟨|Fᵢ − ⟨Fᵢ⟩|²⟩
        (Zhang et al., CPC 253, 107206, 2020); ``sigma_force_atoms``: that per atom, a list of
        (n_atoms_i,). All with ``ddof=0``.

    Raises
    ------
    InputError
        Shapes that do not match.
    """
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or len(forces) != energies.shape[1] or len(n_atoms) != energies.shape[1]:
        raise InputError(f"energies must be (K, n) with n force blocks and atom counts, got {energies.shape}, "
                         f"{len(forces)} and {len(n_atoms)}")
    mean_forces, per_atom = [], []
    for j, f in enumerate(forces):
        f = np.asarray(f, dtype=float)
        if f.shape != (energies.shape[0], int(n_atoms[j]), 3):
            raise InputError(f"forces of configuration {j} must be ({energies.shape[0]}, {n_atoms[j]}, 3), "
                             f"got {f.shape}")
        mean = f.mean(axis=0)
        mean_forces.append(mean)
        per_atom.append(np.sqrt(np.mean(np.sum((f - mean) ** 2, axis=2), axis=0)))
    sigma_e = energies.std(axis=0)
    return {
        "energy": energies.mean(axis=0),
        "forces": mean_forces,
        "sigma_energy": sigma_e,
        "sigma_energy_per_atom": sigma_e / np.asarray(n_atoms, dtype=float),
        "sigma_force_max": np.array([a.max() for a in per_atom], dtype=float),
        "sigma_force_mean": np.array([a.mean() for a in per_atom], dtype=float),
        "sigma_force_atoms": per_atom,
    }


# -- fitting members (module level: pickled into worker processes) ------------------------------
@dataclass(frozen=True)
class _MemberTask:
    model: Any
    frames: list
    e0s: dict
    workdir: str
    record: dict


def _fit_member(task: _MemberTask):
    model = task.model.fit(task.frames, e0s=task.e0s, workdir=task.workdir)
    # Written only after the fit succeeded: its presence says the files beside it are whole.
    atomic_write_text(Path(task.workdir) / MEMBER_FILE, json.dumps(task.record, indent=1, sort_keys=True) + "\n")
    return model


def _loader(cls: type):
    """``loader(workdir, settings) -> model`` for a back-end that can read a fit back, else None."""
    return getattr(cls, "load_dir", None)  # GAPModel and MACEModel have one


def _fingerprint(name: str, settings: Any, seed: int, e0s: Mapping[str, float], frames: Sequence[Atoms]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": name, "seed": seed, "settings": fingerprint_fields(settings),
                         "e0s": {k: float(v) for k, v in sorted(e0s.items())}}, sort_keys=True, default=repr).encode())
    for atoms in frames:  # clean training frames: geometry and REF labels only
        h.update(structure_hash(atoms).encode())
        h.update(np.float64(atoms.info[REF_ENERGY]).tobytes())
        h.update(np.asarray(atoms.arrays[REF_FORCES], dtype=np.float64).tobytes())
    return h.hexdigest()[:32]


class Committee:
    """``size`` models of one back-end with different seeds and training subsamples.

    Follows the :class:`loops.models.Model` protocol, so it can be fitted, scored and run in MD
    wherever a single model can; :meth:`predict_uncertainty` adds the spread (module notes).

    Parameters
    ----------
    name : str
        A registered model (:data:`loops.models.REGISTRY`): ``"gap"`` or ``"mace"``.
    settings : dataclass instance or None
        The back-end's settings (``None``: its defaults); member ``m`` gets seed ``seed + m``
        through :func:`loops.models.make_model` (GAP: ``rnd_seed = seed + m + 1``).
    size : int, default 4
        Number of members K, at least 2 (one model has no spread).
    seed : int, default 0
        Seed of member 0 and of the subsamples (member ``m`` draws its subsample with
        ``numpy.random.default_rng(seed + m)``).
    subsample : float or None, default 0.8
        Fraction of the training configurations each member is fitted on, in (0, 1]; every
        member gets ``max(1, round(subsample · n))`` distinct configurations. ``None`` or 1:
        every member sees all of them (then only seeds differ: module notes).
    executor : loops.parallel.Executor or None
        Where member fits run (``None``: local processes, one per core, no progress bar).

    Raises
    ------
    InputError
        Unknown model, a size below 2, a negative seed or a subsample outside (0, 1].

    Attributes
    ----------
    members : list of Model
        The K member models (unfitted until :meth:`fit`).
    subsets_ : list of ndarray of int
        After :meth:`fit`: the indices, into the frames given, each member was fitted on.
    loaded_ : list of bool
        After :meth:`fit`: which members were read back from an earlier fit instead of refitted.

    Examples
    --------
    >>> committee = Committee("gap", GAPSettings(n_max=4, l_max=3), size=4)  # doctest: +SKIP
    >>> committee.fit(frames, e0s=e0s, workdir="committee")  # doctest: +SKIP
    >>> committee.predict_uncertainty(test)["sigma_force_max"]  # doctest: +SKIP
    >>> atoms.calc = committee.as_calculator(); atoms.get_forces()  # doctest: +SKIP
    >>> atoms.calc.results["force_deviation"]  # doctest: +SKIP
    """

    def __init__(self, name: str, settings: Any = None, *, size: int = 4, seed: int = 0,
                 subsample: float | None = 0.8, executor: Executor | None = None) -> None:
        cls = model_class(name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise InputError(f"a committee needs size >= 2 members (an integer), got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"committee seed must be an integer >= 0, got {seed!r}")
        if subsample is not None and (isinstance(subsample, bool) or not isinstance(subsample, (int, float))
                                      or not math.isfinite(subsample) or not 0 < subsample <= 1):
            raise InputError(f"committee subsample must be None or a fraction in (0, 1], got {subsample!r}")
        self.name = name
        self.settings = settings if settings is not None else cls.settings_class()
        self.size, self.seed, self.subsample = size, seed, subsample
        self.executor = executor
        self.members = [make_model(name, self.settings, seed=seed + m) for m in range(size)]

    # -- fitting ----------------------------------------------------------------------------------
    def subsets(self, n: int) -> list[np.ndarray]:
        """Training indices of each member for ``n`` configurations (sorted, distinct, ≥ 1 each)."""
        if n < 1:
            raise InputError("a committee needs at least one training configuration")
        if self.subsample is None or self.subsample >= 1:
            return [np.arange(n) for _ in range(self.size)]
        k = max(1, int(round(self.subsample * n)))
        return [np.sort(np.random.default_rng(self.seed + m).choice(n, size=k, replace=False))
                for m in range(self.size)]

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir: str | os.PathLike) -> Committee:
        """Fit (or read back) every member, in parallel, member ``m`` in ``workdir/member<m>/``.

        A member whose directory holds a ``committee_member.json`` with the same fingerprint
        (back-end, settings, seed, E0s, training subset) is loaded from its files when the
        back-end can load (GAP); otherwise it is fitted.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Labelled configurations (``REF_energy``/``REF_forces`` or ``energy``/``forces``, eV
            and eV/Å).
        e0s : mapping of str to float
            Isolated-atom energies in eV.
        workdir : path

        Returns
        -------
        self

        Raises
        ------
        InputError
            No frames, or a frame without valid labels (named by index).
        SetupError, ModelFitError
            From a member's fit (the first failure; members fitted by then keep their files).
        """
        self.__dict__.pop("loaded_", None)  # a fit that fails leaves the committee unfitted
        train = training_frames(frames, who="Committee.fit")
        work = Path(workdir).resolve()
        self.subsets_ = self.subsets(len(train))
        loader = _loader(type(self.members[0]))
        tasks, where = [], []
        loaded = [False] * self.size
        for m, (member, idx) in enumerate(zip(self.members, self.subsets_)):
            sub = [train[int(i)] for i in idx]
            member_dir = work / f"member{m}"
            settings = member.settings if member.settings is not None else type(member).settings_class()
            record = {"member": m, "model": self.name, "seed": self.seed + m, "n_train": len(sub),
                      "fingerprint": _fingerprint(self.name, settings, self.seed + m, e0s, sub)}
            if loader is not None and _matches(member_dir / MEMBER_FILE, record["fingerprint"]):
                try:
                    self.members[m] = loader(member_dir, settings)
                    loaded[m] = True
                    continue
                except (OSError, ValueError, InputError):
                    pass  # unreadable files: fit again
            tasks.append(_MemberTask(member, sub, dict(e0s), str(member_dir), record))
            where.append(m)
        executor = self.executor if self.executor is not None else Executor(progress=False)
        fitted = executor.map(_fit_member, tasks, description=f"fit {len(tasks)} committee members")
        for m, model in zip(where, fitted):
            self.members[m] = model
        self.loaded_ = loaded
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "loaded_"):
            raise NotFittedError("this Committee is not fitted yet: call fit() first")

    # -- prediction -------------------------------------------------------------------------------
    def member_predictions(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every member's prediction: energies ``(K, n)`` eV and per configuration ``(K, n_atoms, 3)`` eV/Å.

        Raises ``NotFittedError`` before :meth:`fit`, and what the members raise (e.g. an
        element they were not fitted on).
        """
        self._check_fitted()
        frames = list(frames)
        energies, forces = [], []
        for member in self.members:
            e, f = member.predict(frames)
            energies.append(np.asarray(e, dtype=float))
            forces.append(f)
        per_frame = [np.stack([forces[m][j] for m in range(self.size)]) for j in range(len(frames))]
        return np.array(energies).reshape(self.size, len(frames)), per_frame

    def predict(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Mean over members: energies ``(n,)`` in eV and a list of ``(n_atoms_i, 3)`` forces in eV/Å."""
        out = self.predict_uncertainty(frames)
        return out["energy"], out["forces"]

    def predict_uncertainty(self, frames: Sequence[Atoms]) -> dict[str, Any]:
        """Mean prediction and member spread of each configuration (:func:`committee_spread`).

        Returns a dict with ``energy``, ``forces``, ``sigma_energy`` (n,) eV,
        ``sigma_energy_per_atom`` (n,) eV/atom, ``sigma_force_max`` (n,) eV/Å (DP-GEN's ε_F),
        ``sigma_force_mean`` (n,) eV/Å and ``sigma_force_atoms`` (list of (n_atoms_i,) eV/Å).
        """
        frames = list(frames)
        energies, forces = self.member_predictions(frames)
        return committee_spread(energies, forces, [len(a) for a in frames])

    def as_calculator(self) -> CommitteeCalculator:
        """An ASE calculator of the mean energy and forces with the spread in ``calc.results``.

        ``results["force_deviation"]`` (ε_F, eV/Å, max over atoms), ``"force_deviation_mean"``
        (eV/Å), ``"energy_deviation"`` (eV) and ``"force_deviations"`` (per atom, eV/Å) are
        refreshed with every evaluation, so MD code can read them after each step.

        Raises ``NotFittedError`` before :meth:`fit`, and what the members' ``as_calculator`` raise.
        """
        self._check_fitted()
        return CommitteeCalculator([member.as_calculator() for member in self.members])

    def feature_spec(self, forces: bool) -> FeatureSpec | None:
        """Member 0's feature space (the members share settings, so they share it)."""
        return self.members[0].feature_spec(forces)

    def descriptors(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Member 0's descriptors of ``frames`` (MACE: selection in a fitted model's own space).

        Raises
        ------
        InputError
            The back-end has no descriptors (GAP: select with :meth:`feature_spec`).
        NotFittedError
            Before :meth:`fit`.
        """
        self._check_fitted()
        if not hasattr(self.members[0], "descriptors"):
            raise InputError(f"a {self.name} committee has no model descriptors; its feature space is feature_spec()")
        return self.members[0].descriptors(frames)

    def __repr__(self) -> str:
        return (f"Committee({self.name!r}, size={self.size}, seed={self.seed}, subsample={self.subsample}, "
                f"settings={type(self.settings).__name__}(...))")

    def __getstate__(self) -> dict[str, Any]:
        # an executor may hold a Dask client, which does not travel to workers
        state = dict(self.__dict__)
        state["executor"] = None
        return state


def _matches(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


class CommitteeCalculator(Calculator):
    """ASE calculator of a committee's mean energy and forces, with its spread in ``results``.

    Parameters
    ----------
    calculators : sequence of ase Calculator
        One per member (at least two), each evaluated on a bare copy of the atoms.

    ``results`` after a calculation: ``energy`` and ``free_energy`` (eV, the member mean),
    ``forces`` ((n_atoms, 3) eV/Å, the mean), ``energy_deviation`` (eV, std over members),
    ``force_deviation`` (eV/Å, maxᵢ √⟨|Fᵢ − ⟨Fᵢ⟩|²⟩; Zhang et al., CPC 253, 107206, 2020),
    ``force_deviation_mean`` (eV/Å) and ``force_deviations`` ((n_atoms,) eV/Å).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, calculators: Sequence[Calculator], **kwargs: Any) -> None:
        if len(calculators) < 2:
            raise InputError(f"a committee calculator needs at least 2 member calculators, got {len(calculators)}")
        super().__init__(**kwargs)
        self.calculators = list(calculators)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        energies, forces = [], []
        for calc in self.calculators:
            work = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
            work.calc = calc
            energies.append(float(work.get_potential_energy()))
            forces.append(np.array(work.get_forces(), dtype=float))
            work.calc = None
        spread = committee_spread(np.array(energies)[:, None], [np.stack(forces)], [len(a)])
        self.results = {
            "energy": float(spread["energy"][0]),
            "free_energy": float(spread["energy"][0]),
            "forces": spread["forces"][0],
            "energy_deviation": float(spread["sigma_energy"][0]),
            "force_deviation": float(spread["sigma_force_max"][0]),
            "force_deviation_mean": float(spread["sigma_force_mean"][0]),
            "force_deviations": spread["sigma_force_atoms"][0],
        }

