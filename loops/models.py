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
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms

from oed.errors import InputError

#: name -> "module:ModelClass"; the settings class is ``ModelClass.settings_class``.
REGISTRY: dict[str, str] = {
    "gap": "loops.gap:GAPModel",
    "mace": "loops.mace:MACEModel",
}


@runtime_checkable
class Model(Protocol):
    """Structural type of an interatomic-potential back-end."""

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir) -> "Model": ...

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
    try:
        target = REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; choose from: {', '.join(available())}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


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


__all__ = ["REGISTRY", "Model", "available", "make_model", "model_class"]
