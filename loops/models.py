"""Interatomic-potential back-ends by name, and the one protocol they follow.

A model (:class:`Model`) is anything with

- ``fit(frames, *, e0s, workdir) -> self``: frames carry ``REF_energy`` (eV) and
  ``REF_forces`` (eV/Å) (or plain ``energy``/``forces``), ``e0s`` maps element symbol to
  isolated-atom energy (eV), ``workdir`` receives the fit's files; a fit that fails leaves the
  model unfitted;
- ``predict(frames) -> (energies (n,) eV, list of (n_atoms_i, 3) eV/Å)``;
- ``as_calculator() -> ase.calculators.calculator.Calculator``: the fitted potential as an ASE
  calculator (molecular dynamics, relaxations), with the energies and forces of ``predict``;
- ``feature_spec(forces) -> oed.design.FeatureSpec | None``: the feature space a selection in
  this model's own terms works in (GAP: its kernel features), or ``None`` when the model has no
  fixed one before a fit (MACE: ``descriptors(frames)`` of a fitted model).

A model with a predictive uncertainty also has ``predict_variance(frames) -> (n,)`` in eV²
(:class:`ModelWithVariance`; GAP has it, MACE has not): test with ``isinstance``.

A new back-end is one module plus one line in ``REGISTRY`` (``"name": "module:Class"``,
imported only when asked for: mace-torch costs nothing until used). Each class takes its
settings dataclass as the only constructor argument (``settings_class`` names it) and is
rebuilt from ``(name, settings)`` in worker processes, so settings must pickle. What the
back-ends share around a fit (clean training frames, E0s, a timed subprocess, log reports)
is in :mod:`loops.fitting`.

Measured here: rMD17 ethanol (PBE/def2-SVP), random training sets from
``data/ethanol/train.xyz``, E0s from ``isolated_atoms.xyz``.

GAP (``benchmarks/gap_ethanol.py``; gap_fit of quippy-ase 0.10.3, single-threaded, on one
core), trained on all 1000 configurations, errors on all 1000 of ``test_MD.xyz``, fit time with
the machine otherwise idle unless marked:

==============================  =========  ==========  ==========  ==========
settings                        force MAE  energy MAE  fit time    peak memory
                                meV/Å      meV/atom
==============================  =========  ==========  ==========  ==========
``BASELINE_SETTINGS``           30.9       0.63        8.2 min¹    4.6 GiB
``GAPSettings(n_sparse=1000)``  17.9       0.35        4.6 min     1.9 GiB
``GAPSettings()``               15.3       0.31        6.5 min     2.2 GiB
``GAPSettings(n_sparse=2000)``  13.6       0.27        8.5 min     2.8 GiB
published GAP                   18.1
==============================  =========  ==========  ==========  ==========

¹ CPU time; 17 min wall on a shared machine. Published: Kovács et al., JCTC 17, 7696 (2021),
1000 random configurations.

On small training sets (GAP force MAE on 200 test_MD configurations, fit time): 25
configurations 146 meV/Å in 2.4 s (baseline 239 meV/Å, 4.4 s); 50: 85 (132) meV/Å; 100: 52
(68) meV/Å in 18 (39) s; 200: 32 (47) meV/Å in 49 (83) s.

What mattered for the GAP defaults (screened on every 5th test configuration): the number of
sparse points (500 per species → 1500 H, 1000 C, 500 O: 31 → 21 meV/Å) and the radial
resolution: with ``diagonal_radial`` and 3000 H, 2000 C, 1000 O sparse points, ``n_max`` 12
with ``atom_sigma`` 0.4 Å gave 15.8 meV/Å where ``n_max`` 8 with ``atom_sigma`` 0.5 gave 22.1;
the full power spectrum at ``n_max`` 12 (4662 numbers per environment against 504) would cost
nine times as much. Smaller gains: the 2-body term (0.5–0.9 meV/Å), ``force_sigma`` 0.01 and
``energy_sigma`` 0.0005 instead of 0.02 and 0.001 (0.6). No gain or a loss: ``zeta`` 2 or 6
instead of 4 (6 checked with gap_fit too), ``force_sigma`` 0.005, ``l_max`` 4 instead of 6
(+0.3 to +1.4), ``n_max`` 16 with ``atom_sigma`` 0.3 (+1.4), ``nu_R=1`` or ``R_mix``/``Z_mix``
compression instead of ``diagonal_radial`` (worse at equal cost). gap_fit's time grows as
(sparse points) × (descriptor gradient entries) × (SOAP length) (:mod:`loops.gap` notes), so the
baseline's 2100-long SOAP with 500 sparse points per species is both slower and less accurate
than the defaults.

MACE with ``MACESettings()`` on 2 shared CPU cores (1 torch thread), force and energy MAE on 200
random configurations of ``test_MD.xyz``:

=======  ========  ===============  ===================
n_train  fit time  force MAE meV/Å  energy MAE meV/atom
=======  ========  ===============  ===================
25       50 s      88.5             4.26
100      169 s     39.7             1.32
200      370 s     28.9             1.31
=======  ========  ===============  ===================

(One seed each; other jobs shared the cores, so times vary by about ±30 %. The published MACE
reached 32.6 meV/Å with 50 configurations: a larger model trained far longer; Batatia et al.,
NeurIPS 2022.) Predicting the 200 configurations takes about 4 s. At 100 configurations and
about the same time, 16 channels with ``max_ell`` 3 beat 32 channels (fewer epochs fit in the
time: 53–63 meV/Å), ``max_ell`` 2 (45–49 meV/Å) and ``correlation`` 2 (59 meV/Å); a larger
``energy_weight`` (10) did not lower the energy error; 200 configurations take about 6 minutes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms

from loops.fitting import species_e0s, training_frame
from oed.errors import InputError
from oed.registry import lookup

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

    from oed.design import FeatureSpec

#: name -> "module:ModelClass"; the settings class is ``ModelClass.settings_class``.
REGISTRY: dict[str, str] = {
    "gap": "loops.gap:GAPModel",
    "mace": "loops.mace:MACEModel",
    "mace-ttt": "loops.ttt:TTTMACEModel",  # two heads (DFT, GFN2-xTB) for test-time training
}


@runtime_checkable
class Model(Protocol):
    """Structural type of an interatomic-potential back-end (see the module notes)."""

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir: str | os.PathLike) -> Model:
        """Fit on labelled configurations; files go to ``workdir``; returns ``self``."""
        ...

    def predict(self, frames: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies ``(n_frames,)`` in eV and a list of ``(n_atoms_i, 3)`` forces in eV/Å."""
        ...

    def as_calculator(self) -> Calculator:
        """A new ASE calculator of the fitted potential (energy in eV, forces in eV/Å)."""
        ...

    def feature_spec(self, forces: bool) -> FeatureSpec | None:
        """The model's own selection features (energy rows, and force rows with ``forces``)."""
        ...


@runtime_checkable
class ModelWithVariance(Model, Protocol):
    """A :class:`Model` with a predictive uncertainty."""

    def predict_variance(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Predictive variance of each configuration's energy, shape ``(n_frames,)``, eV²."""
        ...


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


__all__ = [
    "REGISTRY", "Model", "ModelWithVariance", "available", "make_model", "model_class", "species_e0s",
    "training_frame",
]


def load_fitted(name: str, settings: Any, workdir: str | os.PathLike) -> Model | None:
    """A model fitted earlier into ``workdir`` (a resumed run), or None where it cannot be read.

    GAP models are read from ``gap.xml``, MACE models from ``mace.model`` and ``mace_fit.json``
    (with the same settings only); models without a loader return None (refit them).
    """
    cls = model_class(name)
    loader = getattr(cls, "load_dir", None)
    if loader is None:
        return None
    try:
        return loader(Path(workdir), settings)
    except (OSError, ValueError, InputError):
        return None
