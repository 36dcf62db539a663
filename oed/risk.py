"""Test-error estimates of a ridge (kernel ridge, sparse-GP posterior mean) fit from its training data alone.

Once some labels exist, the error of the linear-in-features model y ≈ Rα fitted by ridge
regression, α̂ = (RᵀR + λI)⁻¹Rᵀy, can be estimated without a test set. With R = UΣVᵀ the hat
matrix is H = U diag(w) Uᵀ, w = σ²/(σ² + λ), and the residuals are (I − H)y, so everything
below costs one thin SVD of R.

- :func:`kare` — the kernel alignment risk estimator of Jacot, Şimşek, Spadaro, Hongler &
  Gabriel, "Kernel Alignment Risk Estimator: Risk Prediction from Training Data", NeurIPS 2020
  (arXiv:2006.09796): KARE = (1/n)‖(I − H)y‖² / ((1/n) tr(I − H))². For kernel ridge regression
  it is algebraically the generalised cross-validation score of Craven & Wahba (Numer. Math. 31,
  377, 1979; GCV), so one function serves both. It estimates the mean squared error on a *new*
  row drawn like the training rows, label noise included.
- :func:`grouped_loo_residuals` — exact leave-one-group-out residuals of the same ridge fit
  (a group is one configuration: its energy row and force rows leave together), from the block
  identity e_g = (I − H_gg)⁻¹ (y_g − ŷ_g) (e.g. Hastie, Tibshirani & Friedman, "The Elements of
  Statistical Learning", 2nd ed., §7.10; the block form follows from the Woodbury identity).
  Rows of one configuration are strongly correlated, which makes row-wise KARE optimistic;
  leaving configurations out is the honest counterpart of K-fold CV over configurations.

Pure numpy; no labels are stored, nothing is fitted beyond the closed forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oed.errors import InputError

__all__ = ["hat_spectrum", "kare", "row_kare", "grouped_loo_residuals"]


def _check(rows: np.ndarray, targets: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray]:
    R = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float).reshape(-1)
    if R.ndim != 2 or R.shape[0] != y.shape[0] or R.shape[0] < 2:
        raise InputError(f"rows (n, d) and targets (n,) must agree with n >= 2; got {R.shape} and {y.shape}")
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(y))):
        raise InputError("rows and targets must be finite")
    if not (np.isfinite(reg) and reg > 0):
        raise InputError(f"the ridge (prior precision) must be > 0, got {reg!r}")
    return R, y


def hat_spectrum(rows: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """U and the shrinkage weights w = σ²/(σ² + λ) of the ridge hat matrix H = U diag(w) Uᵀ.

    Parameters
    ----------
    rows : array (n, d)
        Design rows (any units; λ is in the same units squared).
    reg : float
        Ridge λ > 0 (the prior precision of unit-noise rows: :attr:`oed.forecast.Calibration.reg`).

    Returns
    -------
    U : array (n, r), w : array (r,), r = min(n, d)
    """
    R, _ = _check(rows, np.zeros(len(rows)), reg)
    U, s, _ = np.linalg.svd(R, full_matrices=False)
    return U, s**2 / (s**2 + float(reg))


def _residuals(U: np.ndarray, w: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y - U @ (w * (U.T @ y))


def kare(rows: np.ndarray, targets: np.ndarray, reg: float) -> float:
    """KARE (= GCV for ridge): estimated mean squared error on a new row, in target units².

    Parameters
    ----------
    rows : array (n, d)
    targets : array (n,)
    reg : float
        Ridge λ > 0.

    Returns
    -------
    float
        (1/n)‖(I − H)y‖² / ((1/n) tr(I − H))²; ``inf`` when the fit interpolates (tr(I − H) ≈ 0).

    Raises
    ------
    InputError
        Mismatched shapes, fewer than two rows, non-finite values, λ ≤ 0.
    """
    return float(np.mean(row_kare(rows, targets, reg)))


def row_kare(rows: np.ndarray, targets: np.ndarray, reg: float, *, spectrum=None) -> np.ndarray:
    """Per-row terms of :func:`kare`: residual² / ((1/n) tr(I − H))², shape (n,).

    Their mean over any subset of rows (e.g. the force rows) is that subset's share of the KARE
    estimate, with the effective degrees of freedom of the whole fit. ``spectrum``: the
    :func:`hat_spectrum` of the same rows and ridge, to reuse one SVD.
    """
    R, y = _check(rows, targets, reg)
    U, w = hat_spectrum(R, reg) if spectrum is None else spectrum
    free = 1.0 - float(np.sum(w)) / len(y)
    if free <= 1e-12:
        return np.full(len(y), np.inf)
    return _residuals(U, w, y) ** 2 / free**2


def grouped_loo_residuals(rows: np.ndarray, targets: np.ndarray, reg: float, offsets: Sequence[int], *,
                          spectrum=None) -> np.ndarray:
    """Exact leave-one-group-out residuals y_g − ŷ_{−g}(g) of the ridge fit, shape (n,).

    Parameters
    ----------
    rows : array (n, d)
    targets : array (n,)
    reg : float
        Ridge λ > 0.
    offsets : sequence of int, length G + 1
        Group g is rows ``offsets[g]:offsets[g+1]`` (as :class:`oed.information.DesignBlocks`).
    spectrum : (U, w) or None
        The :func:`hat_spectrum` of the same rows and ridge, to reuse one SVD.

    Raises
    ------
    InputError
        Bad shapes or offsets that do not cover the rows; fewer than two groups.
    """
    R, y = _check(rows, targets, reg)
    off = np.asarray(offsets, dtype=int)
    if off.ndim != 1 or len(off) < 3 or off[0] != 0 or off[-1] != len(y) or np.any(np.diff(off) < 1):
        raise InputError(f"offsets must run from 0 to {len(y)} in increasing steps over >= 2 groups")
    U, w = hat_spectrum(R, reg) if spectrum is None else spectrum
    res = _residuals(U, w, y)
    out = np.empty_like(res)
    for a, b in zip(off[:-1], off[1:]):
        Ug = U[a:b]
        h = (Ug * w) @ Ug.T  # H_gg
        out[a:b] = np.linalg.solve(np.eye(b - a) - h, res[a:b])
    return out
