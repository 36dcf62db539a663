"""Selectors by name.

A new selector is one module in this package plus one line in ``REGISTRY``
("name": "module:Class"); modules are imported only when asked for, so heavy
back-ends (gpytorch, botorch) cost nothing until used.
"""

from __future__ import annotations

import inspect

from oed.errors import InputError
from oed.registry import lookup
from oed.selectors._base import Selector, check_is_fitted

REGISTRY: dict[str, str] = {
    "random": "oed.selectors.random:RandomSelector",
    "d-optimal": "oed.selectors.d_optimal:GreedyDOptimal",
    "a-optimal": "oed.selectors.a_optimal:GreedyAOptimal",
    "i-optimal": "oed.selectors.i_optimal:GreedyIOptimal",
    "fps": "oed.selectors.fps:FarthestPointSampling",
    "cur": "oed.selectors.cur:CURSelector",
    "kmeans": "oed.selectors.kmeans:KMeansMedoids",
    "info-gain": "oed.selectors.info_gain:GPInformationGain",
}


def available() -> list[str]:
    """Registered selector names."""
    return sorted(REGISTRY)


def selector_class(name: str) -> type:
    """The class registered under ``name``.

    Raises
    ------
    InputError
        For an unknown name (the message lists the known ones).
    """
    return lookup(REGISTRY, name, "selection strategy")


def make_selector(
    name: str, n_to_select: int, *, seed: int | None = None, reg: float | None = None, **params
) -> Selector:
    """Build the selector ``name`` for ``n_to_select`` picks.

    The settings every strategy may share go only where they mean something:
    ``seed`` becomes ``random_state`` for selectors that draw random numbers,
    ``reg`` (prior precision) goes to selectors built on an information
    matrix. Other ``params`` must be accepted by the selector's constructor.

    Raises
    ------
    InputError
        Unknown name or a parameter the selector does not take.
    """
    cls = selector_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if "random_state" in accepted:
        params["random_state"] = seed
    if reg is not None and "reg" in accepted:
        params["reg"] = reg
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"selector {name!r} does not take parameter(s): {', '.join(unknown)}")
    return cls(n_to_select, **params)


__all__ = ["REGISTRY", "Selector", "available", "check_is_fitted", "make_selector", "selector_class"]
