"""Greedy GP design by rank-one updates of the posterior covariance (the fast driver of info-gain).

Pure torch: the exact-GP posterior of :class:`oed.selectors.info_gain.GPInformationGain`
with kernel s · (x̂·x̂')^ζ and Gaussian noise σ_n², updated after each pick by
Σ ← Σ − Σ(:, j) Σ(j, :) / (Σ(j, j) + σ_n²) (Rasmussen & Williams, "Gaussian Processes for
Machine Learning", MIT Press 2006, ch. 2), run by oed's greedy driver
(:func:`oed.selectors._greedy.greedy_select`).
"""

from __future__ import annotations

import torch

from oed._torch import CHUNK
from oed.selectors._greedy import greedy_select

#: Smallest row norm used when normalising features (zero rows stay zero).
_TINY = 1e-300


def unit_rows(X):
    """Rows scaled to unit Euclidean norm, ``(..., n, d)``; all-zero rows stay zero."""
    return X / X.norm(dim=-1, keepdim=True).clamp_min(_TINY)


def greedy_rank_one(P, Tr, Q, k: int, *, outputscale: float, noise: float, zeta: int,
                    acquisition: str, chunk: int = CHUNK):
    """Greedy GP design with pending picks, by rank-one updates of the posterior covariance.

    Same selections and values as ``optimize_acqf_discrete`` with
    :class:`~oed.selectors.info_gain.PosteriorInformationGain` ("variance") or BoTorch's
    ``qNegIntegratedPosteriorVariance`` ("nipv"), computed from the posterior
    covariance Σ given training rows and earlier picks: after picking j,
    Σ ← Σ − Σ(:, j) Σ(j, :) / (Σ(j, j) + σ_n²).

    Parameters
    ----------
    P : Tensor, shape (n, d)
        Pool features (raw; normalised here).
    Tr : Tensor, shape (m, d)
        Training features (m may be 0).
    Q : Tensor, shape (t, d) or None
        Integration (target) points for "nipv".
    k : int
        Number of picks.
    outputscale, noise : float
        Signal variance s and noise variance σ_n² (same units).
    zeta : int
    acquisition : {"variance", "nipv"}

    Returns
    -------
    picks : ndarray of int, shape (k,)
    gains : ndarray, shape (k,)
        "variance": ½ log(1 + σ²(x_j | earlier)/σ_n²), nats;
        "nipv": decrease of the mean latent variance over Q (units of s).
    """
    hooks = _RankOneHooks(P, Tr, Q, k, outputscale=outputscale, noise=noise, zeta=zeta,
                          acquisition=acquisition, chunk=chunk)
    return greedy_select(hooks, k)


class _RankOneHooks:
    """Greedy hooks of :func:`greedy_rank_one`: the GP posterior given training rows and picks.

    State: the posterior variance of every pool row, the Cholesky rows ``Wp``
    of the training set, one row of ``V`` per pick (Σ = K − WpᵀWp − VᵀV on the
    pool) and, for "nipv", Σ(Q, P).
    """

    def __init__(self, P, Tr, Q, k, *, outputscale, noise, zeta, acquisition, chunk) -> None:
        self.P, self.Tr = unit_rows(P), unit_rows(Tr)
        self.Q = None if Q is None else unit_rows(Q)
        self.k, self.s, self.noise, self.zeta, self.acq, self.chunk = k, outputscale, noise, zeta, acquisition, chunk
        self.n_candidates, self.device = len(P), P.device

    def kern(self, A, B):
        return self.s * (A @ B.T) ** self.zeta

    def kern_chunked(self, A, B):  # (len(A), len(B)), chunked over B (the pool)
        return torch.cat([self.kern(A, B[s : s + self.chunk]) for s in range(0, len(B), self.chunk)], dim=1)

    def start(self) -> None:
        P, Tr, Q, n, dev, dt = self.P, self.Tr, self.Q, len(self.P), self.device, self.P.dtype
        self.var = self.s * (P.norm(dim=1) > 0).to(dt)  # prior variance: s, or 0 for a zero row
        if len(Tr):
            L = torch.linalg.cholesky(self.kern(Tr, Tr) + self.noise * torch.eye(len(Tr), dtype=dt, device=dev))
            self.Wp = torch.linalg.solve_triangular(L, self.kern_chunked(Tr, P), upper=False)  # (m, n)
            self.var = self.var - (self.Wp * self.Wp).sum(dim=0)
        else:
            self.Wp = torch.zeros(0, n, dtype=dt, device=dev)
        if self.acq == "nipv":
            self.S = self.kern_chunked(Q, P)  # Σ(Q, P), (t, n)
            if len(Tr):
                Wq = torch.linalg.solve_triangular(L, self.kern(Tr, Q), upper=False)
                self.S -= Wq.T @ self.Wp
        self.V = torch.zeros(self.k, n, dtype=dt, device=dev)
        self.t = 0

    def score(self):
        self.v_pos = self.var.clamp_min(0.0)
        if self.acq == "variance":
            return 0.5 * torch.log1p(self.v_pos / self.noise)
        return torch.linalg.vector_norm(self.S, dim=0).square() / len(self.S) / (self.v_pos + self.noise)

    def update(self, j: int) -> None:
        P, Wp, V, t = self.P, self.Wp, self.V, self.t
        col = self.kern(P, P[j : j + 1]).reshape(-1) - Wp.T @ Wp[:, j] - V[:t].T @ V[:t, j]
        denom = torch.sqrt(self.v_pos[j] + self.noise)
        v = col / denom
        V[t] = v
        self.var = self.var - v * v
        if self.acq == "nipv":
            self.S.addr_(self.S[:, j] / denom, v, alpha=-1.0)  # in place: no (t, n) temporary
        self.t += 1
