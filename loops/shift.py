"""``oed shift``: distribution-shift diagnostics of test files against a training file.

The label-free maths is :mod:`oed.shift`; this module adds what touches the world: reading the
files and the force norms of a cheap prior (GFN2-xTB through tblite, for training and test
configurations alike), or of the files' own reference forces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oed.errors import InputError

__all__ = ["FORCE_SOURCES", "force_norms", "shift_report"]

#: Where force norms come from: a cheap prior, the files' reference forces, or nowhere.
FORCE_SOURCES = ("gfn2-xtb", "gfn1-xtb", "labels", "none")


def force_norms(frames, source: str, *, workers: int | None = None, progress: bool = False) -> np.ndarray | None:
    """Mean atomic force norm (eV/Å) of each configuration from ``source`` (:data:`FORCE_SOURCES`).

    ``gfn2-xtb``/``gfn1-xtb``: computed here (:func:`loops.xtb.label_many_xtb`); a failed
    calculation gives NaN (that configuration is then not judged by force norm).
    ``labels``: the reference forces (``REF_forces``) of each configuration; NaN where absent.
    ``none``: ``None``.

    Raises
    ------
    InputError
        An unknown source.
    """
    from oed.io import reference_forces
    from oed.shift import mean_force_norms

    if source not in FORCE_SOURCES:
        raise InputError(f"--forces must be one of {', '.join(FORCE_SOURCES)}, got {source!r}")
    if source == "none":
        return None
    if source == "labels":
        forces = [reference_forces(a) for a in frames]
    else:
        from loops.xtb import label_many_xtb

        forces = [r.atoms.arrays["REF_forces"] if r.ok else None
                  for r in label_many_xtb(frames, method=source, workers=workers, progress=progress)]
    out = np.full(len(frames), np.nan)
    known = [i for i, f in enumerate(forces) if f is not None]
    if known:
        out[known] = mean_force_norms([forces[i] for i in known])
    return out


def shift_report(train: str | os.PathLike, tests: Sequence[str | os.PathLike], *, forces: str = "gfn2-xtb",
                 cutoff: float = 5.0, n_sigma: float = 1.0, workers: int | None = None,
                 progress: bool = False) -> tuple[dict, dict]:
    """Diagnostics of every test file against ``train``.

    Returns
    -------
    (report, results)
        ``report``: the JSON object of ``oed shift --json`` — ``train``, the settings,
        ``thresholds`` and ``files.<stem>`` with ``n``, ``flagged_fraction.<diagnostic>`` (0–1),
        per-configuration ``values.<diagnostic>`` (null for infinity or unknown) and
        ``flagged.<diagnostic>``. ``results``: stem → :class:`oed.shift.ShiftResult`.

    Raises
    ------
    InputError
        Unreadable files, two test files with one stem, a source without forces.
    """
    from oed.descriptors import SOAPDescriptor
    from oed.io import read_structures
    from oed.shift import ShiftDiagnostics

    train_frames = read_structures(train, what="training set")
    sets = {Path(p).stem: read_structures(p, what="test file") for p in tests}
    if len(sets) != len(tests):
        raise InputError("test files must have distinct names (file stems key the report)")
    if not sets:
        raise InputError("give at least one test file")
    # the descriptor covers every element of every file, so that an unseen element is a shift, not an error
    species = sorted({s for frames in [train_frames, *sets.values()] for a in frames for s in a.get_chemical_symbols()})
    train_norms = force_norms(train_frames, forces, workers=workers, progress=progress)
    if forces == "labels" and np.sum(np.isfinite(train_norms)) < 2:
        raise InputError(f"--forces labels: {train} has no reference forces; use --forces gfn2-xtb")
    norms = {name: force_norms(frames, forces, workers=workers, progress=progress) for name, frames in sets.items()}
    diag = ShiftDiagnostics(descriptor=SOAPDescriptor(species=species), cutoff=cutoff, n_sigma=n_sigma)
    diag.fit(train_frames, force_norms=train_norms)
    results = {name: diag.score(frames, force_norms=norms[name]) for name, frames in sets.items()}
    report = {
        "train": str(train),
        "n_train": len(train_frames),
        "settings": {"forces": forces, "cutoff": cutoff, "n_sigma": n_sigma, "gamma_threshold": diag.gamma_threshold,
                     "descriptor": "soap", "species": species},
        "thresholds": {k: _json(v) for k, v in diag.thresholds_.items()},
        "files": {name: {"n": r.n,
                         "flagged_fraction": r.flagged_fraction,
                         "values": {k: [_json(x) for x in v] for k, v in r.values.items()},
                         "flagged": {k: [bool(x) for x in v] for k, v in r.flagged.items()}}
                  for name, r in results.items()},
    }
    return report, results


def _json(x):
    """JSON has no infinity or NaN: null."""
    x = float(x)
    return x if np.isfinite(x) else None
