"""Reading structure files and their reference labels (ASE units: eV, Å, eV/Å).

oed reads extended XYZ through :func:`ase.io.read`. Reference labels are
accepted under the conventional keys ``REF_energy`` / ``REF_forces`` (MACE,
wfl) or the plain ``energy`` / ``forces`` that ASE turns into a single-point
calculator. Nothing here needs labels: a pool of bare geometries is valid.

Every file oed writes goes through :func:`atomic_open` (temporary file beside the
target, fsync, :func:`os.replace`): a crash leaves the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from ase import Atoms

from oed.errors import InputError, PoolError

REF_ENERGY = "REF_energy"
REF_FORCES = "REF_forces"
#: Decimals of Å kept when hashing positions: far below any physical change.
_HASH_DECIMALS = 6


def read_structures(path: str | os.PathLike, *, what: str = "structure file") -> list[Atoms]:
    """Read every configuration of an (extended) XYZ file.

    Parameters
    ----------
    path
        File to read; any format :func:`ase.io.read` detects, extxyz expected.
    what
        Words naming the file in error messages ("pool", "test set", ...).

    Returns
    -------
    list of ase.Atoms, in file order, at least one.

    Raises
    ------
    PoolError
        If the file is missing, is a directory, cannot be parsed, or holds no
        configuration.
    """
    p = Path(path)
    if not p.exists():
        raise PoolError(f"{what} not found: {p}")
    if p.is_dir():
        raise PoolError(f"{what} is a directory, expected a structure file: {p}")
    if p.stat().st_size == 0:
        raise PoolError(f"{what} is empty (no configurations): {p}")
    from ase.io import read  # lazy: ase.io pulls many format modules

    try:
        frames = read(p, index=":")
    except Exception as exc:  # ase raises many types for malformed files
        raise PoolError(f"cannot read {what} {p}: {type(exc).__name__}: {exc}") from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise PoolError(f"{what} is empty (no configurations): {p}")
    for i, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise PoolError(f"{what} {p}: configuration {i} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise PoolError(f"{what} {p}: configuration {i} has non-finite positions")
    return frames


def reference_energy(atoms: Atoms) -> float | None:
    """Reference total energy in eV, or ``None`` when the configuration has none.

    Looks at ``info['REF_energy']`` first, then a single-point calculator
    (what ASE builds from a plain ``energy=`` key), then ``info['energy']``.
    """
    if REF_ENERGY in atoms.info:
        return float(atoms.info[REF_ENERGY])
    calc = atoms.calc
    if calc is not None and "energy" in getattr(calc, "results", {}):
        return float(calc.results["energy"])
    if "energy" in atoms.info:
        return float(atoms.info["energy"])
    return None


def reference_forces(atoms: Atoms) -> np.ndarray | None:
    """Reference forces, shape ``(n_atoms, 3)`` in eV/Å, or ``None`` when absent."""
    if REF_FORCES in atoms.arrays:
        return np.asarray(atoms.arrays[REF_FORCES], dtype=float)
    calc = atoms.calc
    if calc is not None and "forces" in getattr(calc, "results", {}):
        return np.asarray(calc.results["forces"], dtype=float)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=float)
    return None


def structure_hash(atoms: Atoms) -> str:
    """Content hash of a configuration: atomic numbers, positions, cell, pbc, charge.

    Two configurations with the same hash get the same label, which is what
    lets a loop skip anything it has labelled before. Positions are rounded to
    1e-6 Å, which absorbs most write/read noise but not all: a coordinate within
    ~1e-8 Å of a rounding boundary can change on a round trip through extxyz
    (8 decimals) and with it the hash (measured: 37 of 200 random 9-atom
    frames). Hash configurations as they are read back from the file that
    keeps them.
    """
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.positions, _HASH_DECIMALS).astype(np.float64).tobytes())
    h.update(np.round(np.asarray(atoms.cell), _HASH_DECIMALS).astype(np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    h.update(repr(atoms.info.get("charge", 0)).encode())
    return h.hexdigest()[:24]


def pool_hash(frames: Sequence[Atoms]) -> str:
    """Content hash of a whole pool (order matters: indices refer to it)."""
    h = hashlib.sha256()
    for atoms in frames:
        h.update(structure_hash(atoms).encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO]:
    """Open a file for writing that appears at ``path`` whole, or not at all.

    The data goes to a new temporary file in the same folder (a rename within one file
    system is atomic; across file systems it is not), is flushed and ``fsync``-ed, and the
    temporary file then replaces ``path`` with :func:`os.replace`. A crash or an exception
    inside the ``with`` block leaves the old file (or none) and removes the temporary one.
    Temporary names hold the process id, the thread id and a random token, and are created
    exclusively, so concurrent writers (processes or threads) never share one: the last
    :func:`os.replace` wins and the file is always one writer's complete version.

    Parameters
    ----------
    path : path-like
        Destination; missing parent folders are created.
    mode : {"w", "wb"}, default "w"
        Text or binary.
    encoding : str, default "utf-8"
        Text mode only.

    Yields
    ------
    file object
        Open for writing; do not close it yourself.

    Raises
    ------
    InputError
        For another ``mode``.
    OSError
        When the folder cannot be created or written; ``path`` is then unchanged.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_open(target) as fh:
    ...     _ = fh.write("complete")
    >>> target.read_text(), [p.name for p in target.parent.iterdir()]
    ('complete', ['notes.txt'])
    """
    if mode not in ("w", "wb"):
        raise InputError(f"atomic_open writes text ('w') or bytes ('wb'), got mode {mode!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp")
    # "x": exclusive creation, so a name clash fails instead of sharing a file
    fh = open(tmp, "xb") if mode == "wb" else open(tmp, "x", encoding=encoding)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points to it
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`).

    A crash leaves either the old file or the new one, never half of one.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "summary.md"
    >>> atomic_write_text(target, "# Summary")
    >>> target.read_text()
    '# Summary'
    """
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_structures(path: str | os.PathLike, frames: Sequence[Atoms]) -> None:
    """Write configurations as extended XYZ, atomically (see :func:`atomic_open`).

    Parameters
    ----------
    path : path-like
        The ``.xyz`` file.
    frames : sequence of ase.Atoms
        Written in order; ``info``, ``arrays`` and single-point results as extxyz keeps them.
    """
    from ase.io import write  # lazy: ase.io pulls many format modules

    with atomic_open(path, "w") as fh:
        write(fh, list(frames), format="extxyz")
