"""Device and dtype handling for the torch selection core.

Selection runs in float64 (log-determinants of nearly singular information
matrices need it) on a GPU when one is present, else on the CPU. Heavy
per-pool work is chunked over candidates so the pool never needs more than
one chunk of temporaries at a time.
"""

from __future__ import annotations

import numpy as np

from oed.errors import InputError

DTYPE_NAME = "float64"
#: Candidate rows per chunk: 100 000 × 2 000 float64 features is 1.6 GB, a
#: chunk of 8 192 rows keeps the temporaries near 130 MB.
CHUNK = 8192


def resolve_device(device: str | None = "auto"):
    """``"auto"`` → CUDA when available, else CPU; any other string is used as is.

    Raises
    ------
    InputError
        For a device torch does not know, or ``"cuda"`` without a GPU.
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for, but no CUDA GPU is available")
    return dev


def as_tensor(X, device):
    """Array → float64 tensor on ``device`` (no copy when already there)."""
    import torch

    return torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=torch.float64, device=device)
