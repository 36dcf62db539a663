"""Shared driver of the information-matrix selectors (D-, A-, I-optimal, random scoring)."""

from __future__ import annotations

import numpy as np

from oed._torch import resolve_device
from oed.engine import InformationState, exchange, greedy, prior_covariance
from oed.errors import InputError
from oed.information import as_blocks


def check_reg(reg) -> float:
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise InputError(f"reg must be a positive number, got {reg!r}")
    return float(reg)


def reorder_greedily(state_factory, design, score):
    """Order a finished design greedily within itself so gains are non-increasing."""
    state = state_factory()
    n = state.J.shape[0]
    exclude = np.ones(n, dtype=bool)
    exclude[design] = False
    return greedy(state, len(design), score, exclude=exclude)


def run_greedy(X, X_train, k, *, reg, score, criterion=None, track="none", target=None, device="auto",
               do_exchange=False, order=None):
    """Greedy (then optional exchange) selection; returns picks, gains, swaps, final state.

    ``criterion(state) -> float`` (to maximise) is needed for exchange.
    """
    blocks = as_blocks(X)
    dev = resolve_device(device)
    cov0 = prior_covariance(blocks.n_features, reg=reg, train=X_train, device=dev)

    def fresh():
        return InformationState(blocks, reg=reg, target=target, track=track, device=dev, cov0=cov0)

    state = fresh()
    picks, gains = greedy(state, k, score, order=order)
    swaps = 0
    if do_exchange and k < len(blocks):
        if criterion is None:
            raise InputError("exchange needs a criterion")
        design, swaps, state = exchange(fresh, list(picks), score, criterion)
        if swaps:
            # order the final design greedily within itself: gains non-increasing again
            picks, gains = reorder_greedily(fresh, design, score)
    return picks, gains, swaps, state
