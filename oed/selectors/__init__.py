"""Selectors by name.

A new selector is one module in this package (a subclass of
:class:`~oed.selectors._base.SelectorBase`, with its tags) plus one line in
``REGISTRY`` ("name": "module:Class"); modules are imported only when asked
for, so heavy back-ends (gpytorch, botorch) cost nothing until used.

Every selector is a scikit-learn estimator with one ``fit`` signature,
``fit(X, *, X_train=None, y_train=None, X_target=None)``, and class-level tags
that say what it uses, readable without an instance:

>>> cls = selector_class("i-optimal")
>>> cls.uses_target, cls.uses_labels, cls.uses_prior_precision, cls.gains_unit
(True, False, True, 'variance reduction')
>>> make_selector("random", 5, seed=0)
RandomSelector(n_to_select=5, random_state=0)
"""

from __future__ import annotations

from oed.errors import InputError
from oed.registry import lookup
from oed.selectors._base import Selector, SelectorBase, check_is_fitted

REGISTRY: dict[str, str] = {
    "random": "oed.selectors.random:RandomSelector",
    "d-optimal": "oed.selectors.d_optimal:GreedyDOptimal",
    "a-optimal": "oed.selectors.a_optimal:GreedyAOptimal",
    "i-optimal": "oed.selectors.i_optimal:GreedyIOptimal",
    "fps": "oed.selectors.fps:FarthestPointSampling",
    "ggfps": "oed.selectors.ggfps:GGFPS",
    "cur": "oed.selectors.cur:CURSelector",
    "kmeans": "oed.selectors.kmeans:KMeansMedoids",
    "info-gain": "oed.selectors.info_gain:GPInformationGain",
    "lcmd": "oed.selectors.lcmd:LCMD",
    "kmeans++": "oed.selectors.kmeanspp:KMeansPPPosterior",
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

    The settings every strategy may share go only where they mean something
    (the class tags say where): ``seed`` becomes ``random_state`` for
    selectors that draw random numbers (``uses_random_state``), ``reg`` (prior
    precision) goes to selectors built on an information matrix
    (``uses_prior_precision``). Other ``params`` must be constructor parameters
    of the selector.

    Raises
    ------
    InputError
        Unknown name or a parameter the selector does not take.
    """
    cls = selector_class(name)
    if cls.uses_random_state:
        params["random_state"] = seed
    if reg is not None and cls.uses_prior_precision:
        params["reg"] = reg
    unknown = sorted(set(params) - set(cls._get_param_names()) - {"n_to_select"})
    if unknown:
        raise InputError(f"selector {name!r} does not take parameter(s): {', '.join(unknown)}")
    return cls(n_to_select, **params)


__all__ = ["REGISTRY", "Selector", "SelectorBase", "available", "check_is_fitted", "make_selector", "selector_class"]
