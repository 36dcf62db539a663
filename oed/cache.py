"""On-disk cache of feature arrays and design blocks, keyed by content.

SOAP gradients and kernel force rows of a 1000-configuration pool take
minutes; the same pool and settings give the same arrays, so they are stored
once under a key naming both: the pool's content hash
(:func:`oed.io.pool_hash`) and the feature settings (``get_params()``). The
file name is the SHA-256 of the key's canonical JSON; the key itself is stored
in the file and compared on load, so a file is only trusted for its own key.
A file that cannot be read back (truncated, bad CRC, wrong content) is
recomputed and overwritten, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from oed.errors import InputError
from oed.information import DesignBlocks
from oed.io import atomic_open

#: Environment variable naming the cache folder (default ``~/.cache/oed``).
CACHE_ENV = "OED_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$OED_CACHE_DIR`` when set, else ``~/.cache/oed``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "oed")


def canonical_key(key: dict) -> str:
    """The key as canonical JSON (sorted keys, no spaces; NumPy scalars as numbers).

    Raises
    ------
    InputError
        If the key is not a dict or holds something JSON cannot write.
    """
    if not isinstance(key, dict):
        raise InputError(f"cache key must be a dict, got {type(key).__name__}")

    def scalar(obj):
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False, default=scalar)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cache key is not JSON-serialisable: {exc}") from exc


def cached_array(
    key: dict,
    compute: Callable[[], np.ndarray | DesignBlocks],
    *,
    cache_dir: str | os.PathLike | None | bool = None,
) -> np.ndarray | DesignBlocks:
    """``compute()``, or its stored result for the same ``key``.

    Parameters
    ----------
    key : dict
        JSON-serialisable; should hold the pool's content hash
        (:func:`oed.io.pool_hash`) and every setting the result depends on.
    compute : callable
        Called without arguments on a miss; returns an ndarray or
        :class:`~oed.information.DesignBlocks`.
    cache_dir : path, None or False
        Folder of the ``.npz`` files; ``None``: :func:`default_cache_dir`;
        ``False``: no cache (always compute).

    Returns
    -------
    ndarray or DesignBlocks
        Identical to what ``compute`` returned when the entry was written.

    Raises
    ------
    InputError
        For a key JSON cannot write, or ``compute`` returning another type.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> cached_array({"pool": "abc", "n_max": 2}, lambda: np.eye(2), cache_dir=folder).shape
    (2, 2)
    """
    if cache_dir is False:
        return _checked(compute())
    text = canonical_key(key)
    folder = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()}.npz"
    if path.exists():
        try:
            return _load(path, text)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"cache file {path} is unreadable ({exc}); recomputing", stacklevel=2)
    value = _checked(compute())
    try:
        _save(path, text, value)
    except OSError as exc:  # a read-only or full disk costs speed, not results
        warnings.warn(f"cannot write cache file {path}: {exc}", stacklevel=2)
    return value


def _checked(value):
    if isinstance(value, DesignBlocks):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    raise InputError(f"compute() must return an ndarray or DesignBlocks, got {type(value).__name__}")


def _load(path: Path, text: str) -> np.ndarray | DesignBlocks:
    # allow_pickle=False: a cache file is data, never code.
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != text:
            raise ValueError("stored key differs")
        kind = str(f["kind"])
        if kind == "array":
            return f["array"]
        if kind == "blocks":
            return DesignBlocks(f["rows"], f["offsets"])  # validates shapes and offsets
        raise ValueError(f"unknown kind {kind!r}")


def _save(path: Path, text: str, value: np.ndarray | DesignBlocks) -> None:
    """Write the entry atomically (:func:`oed.io.atomic_open`): readers never see half a file."""
    if isinstance(value, DesignBlocks):
        arrays = {"kind": np.array("blocks"), "rows": value.rows, "offsets": value.offsets}
    else:
        arrays = {"kind": np.array("array"), "array": value}
    with atomic_open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
        np.savez(fh, key=np.array(text), **arrays)
