"""Greedy D-optimal selection (maximum log det of the information matrix)."""

from __future__ import annotations

import numpy as np

from oed.errors import InputError
from oed.information import greedy_information_gain
from oed.selectors._base import SelectorMixin


class GreedyDOptimal(SelectorMixin):
    """Greedy D-optimal design: pick rows maximising log det(λI + Σ φφᵀ).

    Each step picks the candidate with the largest information gain
    ½ log(1 + φᵀΣφ) given the training set and the earlier picks, then updates
    the posterior covariance Σ by a rank-one (Sherman–Morrison) update. For the
    linear-Gaussian model this equals maximising the expected information gain
    about the parameters (DESIGN.md §2). Deterministic: ties go to the lowest
    pool index.

    Parameters
    ----------
    n_to_select : int
        Number of configurations to pick (truncated, with a warning, to the pool).
    reg : float, default 1e-3
        Prior precision λ, relative to unit label noise. Small λ trusts the
        features; large λ makes the design closer to picking large-norm rows.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
        Pool indices in pick order.
    gains_ : ndarray, shape (n_selected_,)
        Information gain of each pick in nats; non-increasing.
    n_selected_ : int

    References
    ----------
    Fedorov, "Theory of Optimal Experiments" (Academic Press, 1972);
    Nemhauser, Wolsey & Fisher, Math. Program. 14, 265 (1978), doi:10.1007/BF01588971.
    """

    def __init__(self, n_to_select: int, *, reg: float = 1e-3) -> None:
        self.n_to_select = n_to_select
        self.reg = reg

    def fit(self, X, *, X_train=None) -> GreedyDOptimal:
        """Select from the pool.

        Parameters
        ----------
        X : array, shape (n_candidates, n_features)
            Candidate features (e.g. summed SOAP, see :mod:`oed.descriptors`).
        X_train : array, shape (n_train, n_features), optional
            Features of configurations already labelled; the picks add
            information on top of them.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Bad shapes, non-finite values, an empty pool, ``reg <= 0`` or a
            non-positive ``n_to_select``.
        """
        X, X_train, k = self._validate(X, X_train)
        if not (isinstance(self.reg, (int, float)) and self.reg > 0):
            raise InputError(f"reg must be a positive number, got {self.reg!r}")
        idx, gains = greedy_information_gain(X, k, reg=float(self.reg), X_train=X_train)
        self.selected_idx_ = idx
        self.gains_ = gains
        self.n_selected_ = k
        return self
