"""Rank a pool of configurations: features → selector → picks (label-free).

One library call behind ``oed rank``: it reads nothing and writes nothing,
so the command line and the active-learning loop share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from oed.descriptors import SOAPDescriptor, species_of
from oed.information import log_det_information
from oed.selectors import make_selector


@dataclass(frozen=True)
class Ranking:
    """Result of :func:`rank_pool`.

    Attributes
    ----------
    selected : ndarray of int, shape (k,)
        0-based pool indices in pick order.
    gains : ndarray, shape (k,)
        Information gain of each pick in nats (see the selector).
    log_det : float
        log det of the information matrix λI + Σ φφᵀ over training set and picks.
    strategy : str
    """

    selected: np.ndarray
    gains: np.ndarray
    log_det: float
    strategy: str


def structure_features(
    pool: Sequence[Atoms], train: Sequence[Atoms] = (), *, descriptor: SOAPDescriptor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Summed-SOAP features of pool and training set, with species covering both.

    Returns
    -------
    X_pool : ndarray, shape (n_pool, d)
    X_train : ndarray, shape (n_train, d), or None without a training set
    """
    params = (descriptor or SOAPDescriptor()).get_params()
    if params["species"] is None:  # cover the training set's elements too
        params["species"] = species_of(list(pool) + list(train))
    descriptor = SOAPDescriptor(**params).fit(pool)
    X = descriptor.per_structure(pool)
    X_train = descriptor.per_structure(train) if len(train) else None
    return X, X_train


def rank_pool(
    pool: Sequence[Atoms],
    budget: int,
    *,
    strategy: str = "d-optimal",
    train: Sequence[Atoms] = (),
    seed: int | None = 0,
    reg: float = 1e-3,
    descriptor: SOAPDescriptor | None = None,
) -> Ranking:
    """Pick ``budget`` configurations of ``pool`` with the named strategy.

    Raises
    ------
    InputError
        Unknown strategy, bad budget; UnknownElementError for elements the
        descriptor does not cover.
    """
    X, X_train = structure_features(pool, train, descriptor=descriptor)
    selector = make_selector(strategy, budget, seed=seed, reg=reg).fit(X, X_train=X_train)
    idx = np.asarray(selector.selected_idx_, dtype=int)
    return Ranking(
        selected=idx,
        gains=np.asarray(selector.gains_, dtype=float),
        log_det=log_det_information(X[idx], reg=reg, X_train=X_train),
        strategy=strategy,
    )
