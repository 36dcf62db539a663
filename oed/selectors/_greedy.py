"""The one greedy-selection driver, and the loops of the information-matrix selectors built on it.

:func:`greedy_select` is the loop every greedy selector runs (D-, A-, I-optimal,
random scoring, farthest-point sampling, the GP information gain): at each step
it asks the selector's hooks for a score of every candidate, picks the best one
still available (ties to the lowest index) and tells the hooks to update. The
hooks are those of scikit-matter's ``skmatter._selection.GreedySelector``
(``_init_greedy_search``, ``score``, ``_update_post_selection``): a selector
supplies an object with

    start()      set up the state (called once, before the first step)
    score()      torch tensor (n_candidates,): gain of adding each candidate now, higher is better
    update(j)    candidate j was just picked

The maths of the information-matrix selectors is :class:`oed.engine.InformationState`;
:func:`run_greedy` wires it to the driver and adds Fedorov exchange (:func:`exchange`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from oed._torch import resolve_device
from oed.engine import InformationState, prior_covariance
from oed.errors import InputError
from oed.information import as_blocks


class GreedyHooks(Protocol):
    """What a selector gives :func:`greedy_select`: its state and the three hooks."""

    n_candidates: int
    device: object  # torch.device of the tensors score() returns

    def start(self) -> None: ...

    def score(self): ...

    def update(self, j: int) -> None: ...


def greedy_select(hooks: GreedyHooks, n_select: int, *, first: int | None = None, order=None, exclude=None):
    """Greedy selection: ``n_select`` times pick the best available candidate and update.

    Parameters
    ----------
    hooks : GreedyHooks
        The selector's state and hooks (see the module docstring).
    n_select : int
        Number of picks, at most the number of available candidates.
    first : int, optional
        Pool index of the first pick, whatever its score (FPS's start point).
    order : sequence of int, optional
        Pick these candidates in this order instead of the best ones (scores a
        given design, e.g. random picks).
    exclude : ndarray of bool, shape (n_candidates,), optional
        Candidates that may not be picked.

    Returns
    -------
    picks : ndarray of int, shape (n_select,)
        Pool indices in pick order, distinct.
    gains : ndarray of float, shape (n_select,)
        ``score()[j]`` of each pick ``j`` at the moment it was picked.
    """
    import torch

    hooks.start()
    available = torch.ones(hooks.n_candidates, dtype=torch.bool, device=hooks.device)
    if exclude is not None:
        available &= ~torch.as_tensor(exclude, device=hooks.device)
    minus_inf = torch.tensor(-torch.inf, device=hooks.device)
    picks, gains = [], []
    for t in range(n_select):
        s = hooks.score()
        if order is not None:
            j = int(order[t])
        elif t == 0 and first is not None:
            j = int(first)
        else:
            j = int(torch.argmax(torch.where(available, s, minus_inf)))
        picks.append(j)
        gains.append(float(s[j]))  # before update(): hooks may update the scores in place
        available[j] = False
        hooks.update(j)
    return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=float)


class InformationHooks:
    """Greedy hooks of an :class:`~oed.engine.InformationState` with a criterion ``score(state) -> (n,)``.

    ``update(j)`` adds candidate j's design block to the information matrix
    (block Woodbury update of Σ and the per-candidate caches).
    """

    def __init__(self, state: InformationState, score) -> None:
        self.state = state
        self.criterion = score
        self.n_candidates = state.J.shape[0]
        self.device = state.device

    def start(self) -> None:
        pass  # the state arrives holding prior and training set

    def score(self):
        return self.criterion(self.state)

    def update(self, j: int) -> None:
        self.state.add(j)


def greedy(state: InformationState, n_select: int, score, *, exclude=None, order=None):
    """Greedy selection on an information state with ``score(state) -> (n,)`` (higher is better).

    Returns pool indices in pick order and the score of each pick when picked;
    ``order`` scores a given pick order instead, ``exclude`` (bool mask) marks
    candidates that may not be picked. ``state`` is updated in place.
    """
    return greedy_select(InformationHooks(state, score), n_select, exclude=exclude, order=order)


def exchange(state_factory, design: list[int], score, criterion, *, max_passes: int = 10):
    """Fedorov exchange: swap design points for candidates while the criterion improves.

    Parameters
    ----------
    state_factory : callable
        Returns a fresh :class:`InformationState` holding the training set only.
    design : list of int
        Starting design (e.g. the greedy picks).
    score : callable
        ``score(state) -> (n,)`` gain of adding each candidate (higher is better).
    criterion : callable
        ``criterion(state) -> float`` to maximise (e.g. log det Λ, −tr Σ).

    Each pass takes every design point s out in turn, scores all candidates
    against the rest of the design and swaps s for the best one when it gains
    more than s does (Fedorov 1972; Atkinson, Donev & Tobias ch. 12). A pass
    is kept only if a freshly built state confirms that the criterion rose —
    downdates lose digits — so the criterion never gets worse. Stops after a
    pass without a (kept) swap.

    Returns
    -------
    design : list of int
    swaps : int
        Swaps kept.
    state : InformationState
        A fresh state holding training set and final design.
    """
    import torch

    def build(points):
        st = state_factory()
        for j in points:
            st.add(int(j))
        return st

    design = list(design)
    state = build(design)
    best_value = criterion(state)
    swaps = 0
    n = state.J.shape[0]
    for _ in range(max_passes):
        trial, moved = list(design), 0
        for pos in range(len(trial)):
            s_out = trial[pos]
            state.remove(s_out)
            scores = score(state)
            taken = torch.zeros(n, dtype=torch.bool, device=state.device)
            taken[torch.as_tensor(trial, device=state.device)] = True
            taken[s_out] = False
            best = int(torch.argmax(torch.where(taken, torch.tensor(-torch.inf, device=state.device), scores)))
            if best != s_out and float(scores[best]) > float(scores[s_out]):
                trial[pos] = best
                moved += 1
            state.add(trial[pos])
        if moved == 0:
            break
        fresh = build(trial)
        value = criterion(fresh)
        if value <= best_value:  # rounding proposed a swap that does not help: stop here
            state = build(design)
            break
        design, state, best_value, swaps = trial, fresh, value, swaps + moved
    return design, swaps, state


def check_reg(reg) -> float:
    """``reg`` as a positive float; InputError otherwise."""
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
