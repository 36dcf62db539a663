"""Posterior-transformed features: the kernel of the model *after* its training labels.

Batch selectors in the style of Holzmüller, Zaverkin, Kästner & Steinwart ("A framework and
benchmark for deep batch active learning for regression", JMLR 24(164), 2023; code
dholzmueller/bmdal_reg) measure distances not in the raw features but in the posterior
kernel of the linear-Gaussian model behind them,

    k_post(x, x') = φ(x)ᵀ Σ φ(x'),    Σ = (Λ₀ + J_trainᵀ J_train)⁻¹,

so that the labelled configurations have shrunk every direction they inform: a candidate
near the training set is near everything, and a batch spreads over what the model does not
know yet. With Σ = L Lᵀ the features z(x) = Lᵀ φ(x) give k_post(x, x') = z(x)·z(x'), and
‖z(x)‖² is the predictive variance of x's energy in units of its label noise. Training blocks
enter with all their rows (force rows included); a candidate is represented by its energy
row. Λ₀ = λI; in a space whitened by the GAP's own prior (``oed.design.FeatureSpec(prior="kmm")``)
λ = 1 is the sparse GP's K_MM/δ² exactly.
"""

from __future__ import annotations

import numpy as np

from oed._torch import CHUNK, as_tensor
from oed.engine import _cholesky_with_jitter
from oed.information import as_blocks
from oed.selectors.fps import _squared_norms


def posterior_features(X, X_train=None, *, reg: float, device):
    """Posterior-transformed energy rows of pool and training set.

    Parameters
    ----------
    X : DesignBlocks or array (n, d)
        Pool; its energy rows are transformed.
    X_train : DesignBlocks or array (m, d), optional
        Labelled configurations: all their rows form the information matrix, their energy
        rows are transformed too (they are the clusters' first centres).
    reg : float
        Prior precision λ (Λ₀ = λI).
    device : torch.device

    Returns
    -------
    Z : torch tensor, shape (n, d)
        z(x) = Lᵀ φ(x) with L Lᵀ = Σ; ``Z @ Z.T`` is the posterior covariance (noise units).
    Z_train : torch tensor, shape (m, d), or None
    """
    import torch

    blocks = as_blocks(X)
    d = blocks.n_features
    lam = reg * torch.eye(d, dtype=torch.float64, device=device)
    train = None if X_train is None or not len(as_blocks(X_train)) else as_blocks(X_train)
    if train is not None:
        rows = as_tensor(train.rows, device)
        lam = lam + rows.T @ rows
    # Λ = C Cᵀ, Σ = C⁻ᵀ C⁻¹: z = C⁻¹ φ solves a triangular system, chunked over candidates.
    C = _cholesky_with_jitter(lam)

    def transform(E: np.ndarray):
        out = torch.empty((len(E), d), dtype=torch.float64, device=device)
        for s in range(0, len(E), CHUNK):
            rhs = as_tensor(E[s : s + CHUNK], device).T
            out[s : s + CHUNK] = torch.linalg.solve_triangular(C, rhs, upper=False).T
        return out

    Z = transform(blocks.energy_rows())
    Z_train = None if train is None else transform(train.energy_rows())
    return Z, Z_train


def nearest_centre(Z, norms, centres, chunk: int = CHUNK):
    """Squared distance of every row of ``Z`` to its nearest row of ``centres``, and which.

    Returns
    -------
    d2 : torch tensor, shape (n,)
    idx : torch long tensor, shape (n,)
        Row of ``centres`` nearest to each row of ``Z`` (ties to the lowest).
    """
    import torch

    cnorms = _squared_norms(centres, chunk)
    d2 = torch.full((len(Z),), torch.inf, dtype=Z.dtype, device=Z.device)
    idx = torch.zeros(len(Z), dtype=torch.long, device=Z.device)
    for s in range(0, len(Z), chunk):
        zs = Z[s : s + chunk]
        for t in range(0, len(centres), chunk):
            block = norms[s : s + chunk, None] + cnorms[None, t : t + chunk] - 2.0 * zs @ centres[t : t + chunk].T
            best, where = block.min(dim=1)
            closer = best < d2[s : s + chunk]
            d2[s : s + chunk] = torch.where(closer, best, d2[s : s + chunk])
            idx[s : s + chunk] = torch.where(closer, where + t, idx[s : s + chunk])
    return d2.clamp_(min=0.0), idx
