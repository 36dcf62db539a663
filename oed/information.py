"""Information matrices of the linear-Gaussian model behind a kernel potential.

With design rows x (features φ(A), unit noise) and prior precision λI, the
posterior precision after labelling the rows of X is the information matrix

    Λ = λ I + Xᵀ X,        Σ = Λ⁻¹,

and the information gain of labelling x next is ½ log(1 + xᵀ Σ x) nats, the
mutual information between its label and the parameters. Greedy maximisation
of log det Λ is greedy maximisation of that gain; it is monotone submodular,
so greedy is within (1 − 1/e) of the best design (Nemhauser, Wolsey & Fisher,
Math. Program. 14, 265 (1978)). See docs/design.md §2 and Atkinson, Donev &
Tobias, "Optimum Experimental Designs, with SAS" (OUP 2007), ch. 9–11.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oed.errors import InputError

#: Default prior precision λ (Λ₀ = λI) for design rows already divided by the label noise: λ = 1/δ²
#: with δ = 1 eV the prior scale of an atomic energy (GAP's ``delta``; Bartók & Csányi, IJQC 115,
#: 1051 (2015)). The one default of :func:`oed.design.rank_pool` (as ``oed.design.DEFAULT_REG``), of
#: every selector's ``reg`` and of :func:`oed.forecast.forecast`; calibrate it on labels when they exist.
DEFAULT_PRIOR_PRECISION = 1.0


@dataclass(frozen=True)
class DesignBlocks:
    """Rows of the design matrix grouped by configuration: the block J(A) of each.

    A configuration contributes one energy row φ(A)ᵀ/σ_E and, with force
    information, 3N force rows −∂φ/∂r/σ_F (Bartók et al., PRL 104, 136403
    (2010); docs/design.md §1). Blocks are stored stacked; block ``i`` is
    ``rows[offsets[i]:offsets[i + 1]]`` and its first row is always the
    energy row.

    Attributes
    ----------
    rows : ndarray, shape (n_rows, n_features)
        All rows, configuration after configuration (dimensionless: already
        divided by the noise σ).
    offsets : ndarray of int, shape (n_configs + 1,)
        Start of each block; ``offsets[0] == 0``, ``offsets[-1] == n_rows``.

    Raises
    ------
    InputError
        Rows that are not 2-D and finite, or offsets that do not cut them into blocks of >= 1 row.

    Examples
    --------
    Two configurations of one atom each: an energy row and 3 force rows per block.

    >>> import numpy as np
    >>> blocks = DesignBlocks(np.arange(16.0).reshape(8, 2), np.array([0, 4, 8]))
    >>> len(blocks), blocks.sizes.tolist(), blocks.energy_rows().tolist()
    (2, [4, 4], [[0.0, 1.0], [8.0, 9.0]])
    """

    rows: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        rows = check_features(self.rows, "rows")
        off = np.asarray(self.offsets, dtype=np.int64)
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(rows) or np.any(np.diff(off) < 1):
            raise InputError("offsets must start at 0, end at n_rows and give every block >= 1 row")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "offsets", off)

    @classmethod
    def from_features(cls, X) -> DesignBlocks:
        """Energy-only blocks: one row per configuration, shape (n, d) → n blocks."""
        X = check_features(X)
        return cls(X, np.arange(len(X) + 1))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_features(self) -> int:
        return self.rows.shape[1]

    @property
    def sizes(self) -> np.ndarray:
        """Rows per configuration, shape (n_configs,)."""
        return np.diff(self.offsets)

    def block(self, i: int) -> np.ndarray:
        """Rows of configuration ``i``, shape (r_i, n_features)."""
        return self.rows[self.offsets[i] : self.offsets[i + 1]]

    def energy_rows(self) -> np.ndarray:
        """First (energy) row of every block, shape (n_configs, n_features)."""
        return self.rows[self.offsets[:-1]]

    def subset(self, idx) -> DesignBlocks:
        """Blocks ``idx`` (in that order) as a new DesignBlocks."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        sizes = self.sizes[idx]
        take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        return DesignBlocks(self.rows[take], np.concatenate([[0], np.cumsum(sizes)]))


def as_blocks(X) -> DesignBlocks:
    """``X`` as DesignBlocks: a 2-D array becomes energy-only blocks."""
    return X if isinstance(X, DesignBlocks) else DesignBlocks.from_features(X)


def check_features(X, name: str = "X", *, n_features: int | None = None) -> np.ndarray:
    """Validate a feature matrix: 2-D, finite, float64.

    Raises
    ------
    InputError
        If ``X`` is not 2-D, holds NaN/inf, or has another feature count than
        ``n_features``.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InputError(f"{name} contains NaN or infinite values")
    if n_features is not None and X.shape[1] != n_features:
        raise InputError(f"{name} has {X.shape[1]} features, expected {n_features}")
    return X


def log_det_information(X, *, reg: float, X_train=None) -> float:
    """log det(λI + XᵀX + X_trainᵀX_train) in nats, computed in the smaller space.

    Parameters
    ----------
    X : array, shape (n, d)
    reg : float
        Prior precision λ > 0.
    X_train : array, shape (m, d), optional

    Returns
    -------
    float
        Uses det(λI_d + RᵀR) = λ^d det(I_r + RRᵀ/λ) when the r stacked rows
        are fewer than d.
    """
    X = check_features(X)
    rows = X if X_train is None else np.vstack([check_features(X_train, "X_train", n_features=X.shape[1]), X])
    r, d = rows.shape
    if r < d:
        gram = np.eye(r) + rows @ rows.T / reg
        return float(d * np.log(reg) + np.linalg.slogdet(gram)[1])
    return float(np.linalg.slogdet(reg * np.eye(d) + rows.T @ rows)[1])
