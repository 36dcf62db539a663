"""Uniform random selection: the baseline every design must beat."""

from __future__ import annotations

import numpy as np

from oed.errors import InputError
from oed.information import greedy_information_gain
from oed.selectors._base import SelectorMixin


class RandomSelector(SelectorMixin):
    """Pick ``n_to_select`` pool rows uniformly at random without replacement.

    ``gains_`` scores the random picks on the same scale as
    :class:`~oed.selectors.d_optimal.GreedyDOptimal` (information gain of each
    pick given the training set and earlier picks, nats, prior precision
    ``reg``), so a table of either strategy reads the same way; they are not
    monotone.

    Parameters
    ----------
    n_to_select : int
    random_state : int or numpy.random.Generator, optional
        Seed; the same seed gives the same picks.
    reg : float, default 1e-3
        Prior precision used only to report ``gains_``.

    Attributes
    ----------
    selected_idx_ : ndarray of int, shape (n_selected_,)
    gains_ : ndarray, shape (n_selected_,)
    n_selected_ : int
    """

    def __init__(self, n_to_select: int, *, random_state=None, reg: float = 1e-3) -> None:
        self.n_to_select = n_to_select
        self.random_state = random_state
        self.reg = reg

    def fit(self, X, *, X_train=None) -> RandomSelector:
        """Select from the pool; see :class:`GreedyDOptimal.fit` for shapes and errors."""
        X, X_train, k = self._validate(X, X_train)
        if not (isinstance(self.reg, (int, float)) and self.reg > 0):
            raise InputError(f"reg must be a positive number, got {self.reg!r}")
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(len(X))[:k]
        _, gains = greedy_information_gain(X, k, reg=float(self.reg), X_train=X_train, order=order)
        self.selected_idx_ = order
        self.gains_ = gains
        self.n_selected_ = k
        return self
