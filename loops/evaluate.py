"""Errors of a potential against reference labels: energies in meV/atom, forces in meV/Å.

Inputs are in ASE units (eV, eV/Å); outputs in meV so that the numbers read like the
literature (rMD17 tables report force MAE in meV/Å). A test file that carries energies only
(the ethanol OOD sets) gives energy metrics only: what cannot be computed is left out, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from oed.errors import InputError
from oed.io import reference_energy, reference_forces

if TYPE_CHECKING:
    from loops.models import Model

#: eV → meV.
_MEV = 1000.0


def _stack_forces(forces: Sequence[np.ndarray] | np.ndarray, what: str) -> np.ndarray:
    if isinstance(forces, np.ndarray):
        arr = np.asarray(forces, dtype=float)
        return arr.reshape(-1, 3) if arr.size else arr.reshape(0, 3)
    blocks = [np.asarray(f, dtype=float) for f in forces]
    for i, b in enumerate(blocks):
        if b.ndim != 2 or b.shape[1] != 3:
            raise InputError(f"{what} of configuration {i} must have shape (n_atoms, 3), got {b.shape}")
    return np.concatenate(blocks, axis=0) if blocks else np.zeros((0, 3))


def error_metrics(
    ref_energies: Sequence[float] | np.ndarray | None,
    pred_energies: Sequence[float] | np.ndarray | None,
    n_atoms: Sequence[int] | np.ndarray | None,
    ref_forces: Sequence[np.ndarray] | np.ndarray | None,
    pred_forces: Sequence[np.ndarray] | np.ndarray | None,
) -> dict[str, float | int]:
    """Mean absolute and root-mean-square errors of energies and forces.

    Parameters
    ----------
    ref_energies, pred_energies : array-like, shape (n_configs,), or None
        Reference and predicted total energies in eV; ``None`` (or empty) for no energies.
    n_atoms : array-like of int, shape (n_configs,), or None
        Atom count of each configuration; the energy error of a configuration is divided by it.
    ref_forces, pred_forces : list of (n_atoms_i, 3) arrays, an (n, 3) array, or None
        Reference and predicted forces in eV/Å; ``None`` (or empty) for no forces.

    Returns
    -------
    dict
        ``energy_mae``, ``energy_rmse`` in meV/atom (per-configuration error / its atom count,
        then averaged over configurations); ``force_mae``, ``force_rmse`` in meV/Å over all
        force components; ``n_configs`` (configurations behind the energy metrics, or behind
        the force metrics when there are no energies) and ``n_force_components``. Keys that
        cannot be computed are absent.

    Raises
    ------
    InputError
        Mismatched shapes, a non-positive atom count, or neither energies nor forces.
    """
    out: dict[str, float | int] = {}
    has_energy = ref_energies is not None and len(ref_energies) > 0
    has_forces = ref_forces is not None and len(ref_forces) > 0
    if not has_energy and not has_forces:
        raise InputError("no reference energies or forces to compare with")

    if has_energy:
        if pred_energies is None or n_atoms is None:
            raise InputError("reference energies given without predicted energies or atom counts")
        ref = np.asarray(ref_energies, dtype=float).ravel()
        pred = np.asarray(pred_energies, dtype=float).ravel()
        nat = np.asarray(n_atoms, dtype=float).ravel()
        if not (ref.shape == pred.shape == nat.shape):
            raise InputError(
                f"energy arrays differ in length: reference {ref.size}, predicted {pred.size}, "
                f"atom counts {nat.size}"
            )
        if np.any(nat <= 0):
            raise InputError("every configuration needs a positive atom count")
        per_atom = (pred - ref) / nat * _MEV
        out["energy_mae"] = float(np.mean(np.abs(per_atom)))
        out["energy_rmse"] = float(np.sqrt(np.mean(per_atom**2)))
        out["n_configs"] = int(ref.size)

    if has_forces:
        if pred_forces is None:
            raise InputError("reference forces given without predicted forces")
        ref_f = _stack_forces(ref_forces, "reference forces")
        pred_f = _stack_forces(pred_forces, "predicted forces")
        if ref_f.shape != pred_f.shape:
            raise InputError(
                f"force arrays differ in shape: reference {ref_f.shape}, predicted {pred_f.shape}"
            )
        diff = (pred_f - ref_f).ravel() * _MEV
        out["force_mae"] = float(np.mean(np.abs(diff)))
        out["force_rmse"] = float(np.sqrt(np.mean(diff**2)))
        out["n_force_components"] = int(diff.size)
        if not has_energy and not (isinstance(ref_forces, np.ndarray) and ref_forces.ndim == 2):
            out["n_configs"] = int(len(ref_forces))  # a flat (n, 3) array does not say
    return out


def evaluate(model: Model, frames: Sequence[Atoms]) -> dict[str, float | int]:
    """Errors of ``model`` on labelled configurations (see :func:`error_metrics` for the keys).

    Energies are compared on the configurations that carry a reference energy, forces on those
    that carry reference forces (``REF_energy`` / ``REF_forces`` or plain ``energy`` /
    ``forces``); ``model.predict`` is called once, on the configurations with any label.

    Parameters
    ----------
    model : loops.models.Model
        Only its ``predict(frames) -> (energies (n,) eV, list of (n_atoms_i, 3) forces eV/Å)``
        is used, so anything with that method will do.
    frames : sequence of ase.Atoms

    Returns
    -------
    dict
        ``energy_mae``/``energy_rmse`` (meV/atom), ``force_mae``/``force_rmse`` (meV/Å),
        ``n_configs``, ``n_force_components``; keys without data are absent.

    Raises
    ------
    InputError
        No configurations, none with a reference label, or a prediction of the wrong size.
    """
    return evaluate_groups(model, frames, by=None)[None]


def evaluate_groups(
    model: Model, frames: Sequence[Atoms], *, by: str | None = "config_type"
) -> dict[str | None, dict[str, float | int]]:
    """Errors on the whole set and on each group of it, from one call of ``model.predict``.

    Parameters
    ----------
    model : loops.models.Model
        As :func:`evaluate` (only ``predict`` is used).
    frames : sequence of ase.Atoms
    by : str or None, default "config_type"
        ``info`` key whose values split the set (e.g. ethanol / methanol); no split for
        ``None``, or when fewer than two distinct values are present.

    Returns
    -------
    dict
        ``None`` → metrics of the whole set (as :func:`evaluate`), and one entry per distinct
        value of ``info[by]`` (as a string) among the labelled configurations.

    Raises
    ------
    InputError
        As :func:`evaluate`.
    """
    frames = list(frames)
    if not frames:
        raise InputError("no configurations to evaluate")
    energies = [reference_energy(a) for a in frames]
    forces = [reference_forces(a) for a in frames]
    labelled = [i for i in range(len(frames)) if energies[i] is not None or forces[i] is not None]
    if not labelled:
        raise InputError("no configuration carries a reference energy or forces")
    for i in labelled:
        if forces[i] is not None and forces[i].shape != (len(frames[i]), 3):
            raise InputError(
                f"configuration {i}: reference forces have shape {forces[i].shape}, "
                f"expected ({len(frames[i])}, 3)"
            )

    pred_e, pred_f = model.predict([frames[i] for i in labelled])
    pred_e = np.asarray(pred_e, dtype=float).ravel()
    if pred_e.size != len(labelled) or len(pred_f) != len(labelled):
        raise InputError(
            f"model.predict returned {pred_e.size} energies and {len(pred_f)} force arrays "
            f"for {len(labelled)} configurations"
        )

    def metrics(positions: list[int]) -> dict[str, float | int]:
        e_pos = [k for k in positions if energies[labelled[k]] is not None]
        f_pos = [k for k in positions if forces[labelled[k]] is not None]
        return error_metrics(
            [energies[labelled[k]] for k in e_pos] or None,
            pred_e[e_pos] if e_pos else None,
            [len(frames[labelled[k]]) for k in e_pos] or None,
            [forces[labelled[k]] for k in f_pos] or None,
            [np.asarray(pred_f[k], dtype=float) for k in f_pos] or None,
        )

    out: dict[str | None, dict[str, float | int]] = {None: metrics(list(range(len(labelled))))}
    if by is not None:
        groups: dict[str, list[int]] = {}
        for k, i in enumerate(labelled):
            if by in frames[i].info:
                groups.setdefault(str(frames[i].info[by]), []).append(k)
        if len(groups) > 1:
            for value in sorted(groups):
                out[value] = metrics(groups[value])
    return out
