"""The MaxVol active set: rows of maximal |det| and the coordinates γ is read from.

Label-free linear algebra under the extrapolation grade of :mod:`oed.domain`.
Given training rows X (n × d), :func:`fit_active_set` projects them onto their
r leading (uncentred) principal directions P (r × d) and picks by
:func:`maxvol` the r rows whose square matrix A = X[S] Pᵀ has locally maximal
|det A|. Any row x is then written in the basis of the active rows,
c = (x Pᵀ) A⁻¹ (:meth:`ActiveSet.coordinates`), and its grade is
γ(x) = max_j |c_j| (:meth:`ActiveSet.gamma`): γ ≤ 1 interpolates the active
set, γ > 1 extrapolates (Podryabinkin & Shapeev 2017; pacemaker's per-element
active sets, Lysogorskiy et al. 2023). The part of x outside the span of P,
which γ does not see, is :meth:`ActiveSet.residual`.

Nothing here knows about structures or descriptors: the rows may be SOAP
vectors of one element's atoms or summed per-structure features alike.

References
----------
Podryabinkin & Shapeev, "Active learning of linearly parametrized interatomic
potentials", Comput. Mater. Sci. 140, 171 (2017),
doi:10.1016/j.commatsci.2017.08.031.
Lysogorskiy, Bochkarev, Mrovec & Drautz, "Active learning strategies for
atomic cluster expansion models", Phys. Rev. Mater. 7, 043801 (2023),
arXiv:2212.08716.
Goreinov, Oseledets, Savostyanov, Tyrtyshnikov & Zamarashkin, "How to find a
good submatrix", in Matrix Methods: Theory, Algorithms and Applications
(World Scientific, 2010), pp. 247–256, doi:10.1142/9789812836021_0015.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from oed.errors import InputError
from oed.information import check_features

#: Default cap on the number of feature directions an active set spans.
MAX_COMPONENTS = 256

_EPS = np.finfo(float).eps
#: Swaps are made while some |B_ij| exceeds max(tol, 1 + _SWAP_FLOOR): an
#: active row itself has |B_ij| = 1 up to rounding and must never be swapped.
_SWAP_FLOOR = 1e-10


# --------------------------------------------------------------------- maxvol
def _coefficients(A: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """B = A A_S⁻¹ (n × r) for the rows ``idx``: every row in the basis of the active rows."""
    return np.linalg.solve(A[idx].T, A.T).T


def maxvol(A, *, tol: float = 1.01, max_iter: int = 200) -> np.ndarray:
    """Rows of a tall matrix whose square submatrix has locally maximal |det|.

    Starts from the r pivot rows of a column-pivoted QR of Aᵀ (a rank-revealing
    choice), then, while some entry of B = A A_S⁻¹ has |B_ij| > ``tol``, swaps
    active row j for row i; each swap multiplies |det A_S| by |B_ij| (> tol),
    so the loop ends, and B is updated by a rank-one formula (refreshed from
    scratch every r swaps and before stopping) (Goreinov et al. 2010).

    On return every row of A is a combination of the active rows with
    coefficients |B_ij| ≤ tol, so no single swap can raise |det A_S| by more
    than a factor ``tol``: a *dominant* (locally maximal-volume) submatrix.

    Parameters
    ----------
    A : array, shape (n, r), n ≥ r
        Full column rank.
    tol : float, default 1.01
        Swap threshold, ≥ 1. ``tol=1`` asks for a strictly dominant submatrix
        (rows are then swapped while |B_ij| > 1 + 1e-10).
    max_iter : int, default 200
        Most swaps; a warning is issued if the submatrix is still not dominant.

    Returns
    -------
    ndarray of int, shape (r,)
        Row indices S; ``A[S]`` is the submatrix (its row j is the basis row j
        of B). Distinct.

    Raises
    ------
    InputError
        If A is not 2-D and finite, has no columns, fewer rows than columns,
        or is rank-deficient (numerical rank below r: a pivoted-QR diagonal
        entry ≤ max(n, r)·eps·|R₀₀|); for ``tol < 1`` or ``max_iter < 0``.

    Examples
    --------
    >>> A = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.5, 0.5]])
    >>> sorted(maxvol(A).tolist())
    [1, 2]
    """
    import scipy.linalg

    A = check_features(A, "A")
    n, r = A.shape
    if r == 0 or n == 0:
        raise InputError(f"maxvol needs a non-empty matrix, got shape {A.shape}")
    if n < r:
        raise InputError(f"maxvol needs at least as many rows as columns, got {n} rows and {r} columns")
    if not (_is_number(tol) and np.isfinite(tol) and tol >= 1):
        raise InputError(f"maxvol tol must be a finite number >= 1, got {tol!r}")
    if not _is_int(max_iter) or max_iter < 0:
        raise InputError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    _, R, piv = scipy.linalg.qr(A.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    if diag[0] == 0 or diag.min() <= diag[0] * max(n, r) * _EPS:
        rank = int(np.sum(diag > diag[0] * max(n, r) * _EPS))
        raise InputError(
            f"maxvol needs a matrix of full column rank: numerical rank is {rank} < {r} columns"
        )
    idx = np.array(piv[:r], dtype=np.int64)
    threshold = max(float(tol), 1.0 + _SWAP_FLOOR)
    B = _coefficients(A, idx)
    swaps, stale = 0, False
    while True:
        i, j = np.unravel_index(np.argmax(np.abs(B)), B.shape)
        if abs(B[i, j]) <= threshold:
            if stale:  # confirm on a freshly computed B before stopping
                B, stale = _coefficients(A, idx), False
                continue
            break
        if swaps >= max_iter:
            warnings.warn(
                f"maxvol stopped after max_iter={max_iter} swaps with max |B_ij| = {abs(B[i, j]):.4g} "
                f"> tol = {tol}: the submatrix is not yet dominant",
                stacklevel=2,
            )
            break
        col = B[:, j].copy()
        row = B[i, :].copy()
        row[j] -= 1.0
        B -= np.outer(col, row / B[i, j])
        idx[j] = i
        swaps += 1
        stale = True
        if swaps % r == 0:
            B, stale = _coefficients(A, idx), False
    return idx


# ------------------------------------------------------------- active sets
@dataclass(frozen=True)
class ActiveSet:
    """A MaxVol active set over the leading principal directions of some rows.

    Attributes
    ----------
    components : ndarray, shape (r, d)
        Orthonormal rows: the r leading right singular vectors of the
        *uncentred* training rows.
    singular_values : ndarray, shape (r,)
    rows : ndarray of int, shape (r,)
        Active training rows (indices into the rows given to :func:`fit_active_set`).
    inverse : ndarray, shape (r, r)
        A⁻¹ for the active matrix A = X[rows] @ components.T.
    """

    components: np.ndarray
    singular_values: np.ndarray
    rows: np.ndarray
    inverse: np.ndarray

    def coordinates(self, X) -> np.ndarray:
        """c = (x Pᵀ) A⁻¹ of every row, shape (n, r)."""
        return (np.asarray(X, dtype=float) @ self.components.T) @ self.inverse

    def gamma(self, X) -> np.ndarray:
        """γ(x) = max_j |c_j| of every row, shape (n,)."""
        X = np.asarray(X, dtype=float)
        if len(X) == 0:
            return np.zeros(0)
        return np.abs(self.coordinates(X)).max(axis=1)

    def residual(self, X) -> np.ndarray:
        """‖x − x PᵀP‖ / ‖x‖ of every row, shape (n,): the part γ does not see (0 for x = 0)."""
        X = np.asarray(X, dtype=float)
        if len(X) == 0:
            return np.zeros(0)
        norm = np.linalg.norm(X, axis=1)
        res = np.linalg.norm(X - (X @ self.components.T) @ self.components, axis=1)
        return np.divide(res, norm, out=np.zeros_like(res), where=norm > 0)


def fit_active_set(X, *, n_components: int | None = None, tol: float = 1.01, name: str = "X") -> ActiveSet:
    """Project rows onto their r leading (uncentred) principal directions and run :func:`maxvol`.

    Parameters
    ----------
    X : array, shape (n, d)
        Training rows.
    n_components : int, optional
        r. Default ``min(n, d, 256)``. Always capped at n, d and the numerical
        rank of X (singular values > max(n, d)·eps·σ₀).
    tol : float, default 1.01
        MaxVol swap threshold: every training row ends with γ ≤ tol.
    name : str
        Words naming the rows in error messages.

    Raises
    ------
    InputError
        Empty, non-finite or all-zero rows; ``n_components < 1``.
    """
    X = check_features(X, name)
    n, d = X.shape
    if n == 0 or d == 0:
        raise InputError(f"{name} is empty (shape {X.shape}): no training rows to build an active set from")
    cap = MAX_COMPONENTS if n_components is None else _check_n_components(n_components)
    S, Vt = _right_singular(X)
    if S[0] == 0:
        raise InputError(f"{name} is all zeros: no direction to grade against")
    rank = int(np.sum(S > S[0] * max(n, d) * _EPS))
    r = min(cap, n, d, rank)
    comps = np.ascontiguousarray(Vt[:r])
    P = X @ comps.T
    rows = maxvol(P, tol=tol)
    inverse = np.linalg.inv(P[rows])
    return ActiveSet(components=comps, singular_values=S[:r].copy(), rows=rows, inverse=inverse)


def _right_singular(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of X (n × d), via a QR of the long side.

    A thin QR first reduces the problem to a min(n, d)-square one, whose SVD
    is then cheap (n ≪ d is the usual case for SOAP rows of one element).
    """
    import scipy.linalg

    n, d = X.shape
    if n >= d:
        R = np.linalg.qr(X, mode="r")  # (d, d)
        _, S, Vt = scipy.linalg.svd(R, full_matrices=False)
        return S, Vt
    Q, R = scipy.linalg.qr(X.T, mode="economic")  # X = Rᵀ Qᵀ
    _, S, Wt = scipy.linalg.svd(R.T)  # Rᵀ = U S Wᵀ  →  X = U S (Q W)ᵀ
    return S, Wt @ Q.T


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_n_components(n_components) -> int:
    if not _is_int(n_components) or n_components < 1:
        raise InputError(f"n_components must be a positive integer or None, got {n_components!r}")
    return int(n_components)


__all__ = ["MAX_COMPONENTS", "ActiveSet", "fit_active_set", "maxvol"]
