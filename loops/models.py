"""Interatomic-potential back-ends by name: what ``--model`` / ``--train-with`` choose.

A model is anything with

- ``fit(frames, *, e0s, workdir) -> self``: frames carry ``REF_energy`` (eV) and
  ``REF_forces`` (eV/Å) (or plain ``energy``/``forces``), ``e0s`` maps element symbol to
  isolated-atom energy (eV), ``workdir`` receives the fit's files;
- ``predict(frames) -> (energies (n,) eV, list of (n_atoms_i, 3) eV/Å)``.

A new back-end is one module plus one line in ``REGISTRY`` (``"name": "module:Class"``,
imported only when asked for: mace-torch costs nothing until used). Each class takes its
settings dataclass as the only constructor argument and is rebuilt from
``(name, settings)`` in worker processes, so settings must pickle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from loops.errors import SetupError
from oed.errors import InputError
from oed.io import REF_ENERGY, REF_FORCES, reference_energy, reference_forces
from oed.registry import lookup

#: name -> "module:ModelClass"; the settings class is ``ModelClass.settings_class``.
REGISTRY: dict[str, str] = {
    "gap": "loops.gap:GAPModel",
    "mace": "loops.mace:MACEModel",
}


@runtime_checkable
class Model(Protocol):
    """Structural type of an interatomic-potential back-end."""

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir) -> Model: ...

    def predict(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]: ...


def available() -> list[str]:
    """Registered model names."""
    return sorted(REGISTRY)


def model_class(name: str) -> type:
    """The class registered under ``name``.

    Raises
    ------
    InputError
        For an unknown name (the message lists the known ones).
    """
    return lookup(REGISTRY, name, "model")


def make_model(name: str, settings: Any = None, *, seed: int | None = None, **overrides) -> Model:
    """Build the model ``name`` with its settings, an optional seed and field overrides.

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY`.
    settings : dataclass instance or None
        The back-end's settings (``None``: its defaults).
    seed : int or None
        Written into the settings' ``rnd_seed`` (GAP, must be >= 1: ``seed + 1`` is used) or
        ``seed`` field, whichever the settings have, so that repeated fits differ only by seed.
    **overrides
        Other settings fields to replace.

    Raises
    ------
    InputError
        Unknown model or a field its settings do not have.
    """
    cls = model_class(name)
    settings = settings if settings is not None else cls.settings_class()
    fields = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"model {name!r} has no setting(s): {', '.join(unknown)}")
    if seed is not None:
        if "rnd_seed" in fields:
            overrides["rnd_seed"] = int(seed) + 1  # gap_fit refuses 0
        elif "seed" in fields:
            overrides["seed"] = int(seed)
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    return cls(settings)


def training_frame(i: int, atoms: Atoms) -> Atoms:
    """A bare copy of training configuration ``i``: geometry, ``REF_energy`` and ``REF_forces``.

    The reference is read from ``REF_energy``/``REF_forces`` or plain ``energy``/``forces``
    (eV, eV/Å); nothing else is carried over (back-ends add what they keep, e.g. ``config_type``).

    Raises
    ------
    InputError
        No atoms, no reference energy or forces, a non-finite energy, or forces that are not
        finite with shape ``(n_atoms, 3)`` — the message names configuration ``i``.
    """
    if len(atoms) == 0:
        raise InputError(f"training configuration {i} has no atoms")
    energy = reference_energy(atoms)
    forces = reference_forces(atoms)
    if energy is None or forces is None:
        lacking = " and ".join(w for w, v in (("energy", energy), ("forces", forces)) if v is None)
        raise InputError(f"training configuration {i} has no reference {lacking}")
    if not math.isfinite(energy):
        raise InputError(f"training configuration {i} has a non-finite reference energy")
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise InputError(
            f"training configuration {i}: reference forces must be finite with shape "
            f"({len(atoms)}, 3), got shape {forces.shape}"
        )
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.info[REF_ENERGY] = float(energy)
    clean.arrays[REF_FORCES] = np.array(forces, dtype=float)
    return clean


def species_e0s(symbols: Iterable[str], e0s: Mapping[str, float]) -> dict[str, float]:
    """The isolated-atom energies (eV) of the training set's elements, ordered by atomic number.

    Raises
    ------
    SetupError
        An unknown chemical symbol, or an element without a finite E0.
    """
    species = set(symbols)
    unknown = sorted(s for s in species if s not in atomic_numbers or s == "X")
    if unknown:
        raise SetupError(f"unknown chemical symbol(s) {', '.join(map(repr, unknown))}")
    species = sorted(species, key=atomic_numbers.__getitem__)
    missing = [s for s in species if s not in e0s]
    if missing:
        raise SetupError(f"no isolated-atom energy (E0) for element(s) {', '.join(missing)} of the training set")
    used = {s: float(e0s[s]) for s in species}
    bad = [s for s, v in used.items() if not math.isfinite(v)]
    if bad:
        raise SetupError(f"non-finite E0 for element(s) {', '.join(bad)}")
    return used


__all__ = ["REGISTRY", "Model", "available", "make_model", "model_class", "species_e0s", "training_frame"]
