"""Name → class registries whose modules are imported only when a name is asked for.

Used by the selectors (``oed.selectors.REGISTRY``) and the model back-ends
(``loops.models.REGISTRY``): heavy back-ends (gpytorch, botorch, mace-torch) cost nothing
until used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from oed.errors import InputError


def lookup(registry: Mapping[str, str], name: str, what: str) -> type:
    """The class that ``registry`` (``"name": "module:Class"``) holds under ``name``.

    Raises
    ------
    InputError
        For an unknown name: ``unknown {what} 'name'; choose from: …`` (the known names, sorted).
    """
    try:
        target = registry[name]
    except KeyError:
        raise InputError(f"unknown {what} {name!r}; choose from: {', '.join(sorted(registry))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
