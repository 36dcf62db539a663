"""Checks of settings dataclasses from a small declarative table.

A settings class (``GAPSettings``, ``MACESettings``, later the loop and comparison configs)
lists a :class:`Rule` per field and calls :func:`check_fields` from its ``validate``; the first
field that breaks its rule raises one error that names the class, the field, the rule and the
value, e.g. ``GAPSettings.cutoff must be a positive finite number, got -1.0``. This is
scikit-learn's parameter-constraint table (``sklearn.utils._param_validation``) in a few lines;
the errors are :class:`oed.errors.InputError` (a ``ValueError``) or a subclass the caller names.

Booleans are never numbers here (``True`` is not an integer >= 1), and NumPy scalars count as
the Python numbers they hold.

Fields whose value does not change a result (a time limit, a thread count) can be marked
``dataclasses.field(..., metadata={FINGERPRINT: False})``; :func:`fingerprint_fields` leaves
them out of what run directories compare, so changing them does not block a resume.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from oed.errors import InputError

#: ``field(metadata={FINGERPRINT: False})``: the field does not change results.
FINGERPRINT = "fingerprint"


def is_int(x: Any) -> bool:
    """An integer that is not a bool (Python or NumPy)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x: Any) -> bool:
    """A real number that is not a bool (Python or NumPy int or float; may be inf or NaN)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class Rule:
    """A test of one field's value and the words for what it must be.

    Attributes
    ----------
    what : str
        Completes "``Owner.field`` must be ...", e.g. ``"a positive finite number"``.
    test : callable
        ``test(value) -> bool``; True when the value is acceptable.
    """

    what: str
    test: Callable[[Any], bool]

    def check(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):  # e.g. a comparison with a string
            return False


def positive_real() -> Rule:
    """A finite number > 0."""
    return Rule("a positive finite number", lambda v: is_real(v) and math.isfinite(v) and v > 0)


def nonnegative_real() -> Rule:
    """A finite number >= 0."""
    return Rule("a finite number >= 0", lambda v: is_real(v) and math.isfinite(v) and v >= 0)


def real_in(low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> Rule:
    """A number in the interval from ``low`` to ``high`` (half-open ``[low, high)`` by default)."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")

    def test(v: Any) -> bool:
        if not is_real(v) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return Rule(f"in {left}{low:g}, {high:g}{right}", test)


def integer(minimum: int) -> Rule:
    """An integer (not a bool) >= ``minimum``."""
    return Rule(f"an integer >= {minimum}", lambda v: is_int(v) and v >= minimum)


def boolean() -> Rule:
    """``True`` or ``False`` (Python or NumPy bool)."""
    return Rule("True or False", lambda v: isinstance(v, (bool, np.bool_)))


def choice(values: Iterable[Any]) -> Rule:
    """One of ``values`` (compared with ``==``)."""
    values = tuple(values)
    return Rule(f"one of {', '.join(map(str, values))}", lambda v: any(type(v) is type(x) and v == x for x in values))


def int_tuple(minimum: int) -> Rule:
    """A non-empty tuple of integers >= ``minimum``."""
    return Rule(
        f"a non-empty tuple of integers >= {minimum}",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all(is_int(w) and w >= minimum for w in v),
    )


def optional(rule: Rule) -> Rule:
    """``None`` or what ``rule`` accepts."""
    return Rule(f"None or {rule.what}", lambda v: v is None or rule.check(v))


def check_fields(
    obj: Any, rules: Mapping[str, Rule], *, error: type[InputError] = InputError, owner: str | None = None
) -> None:
    """Check each named field of ``obj`` against its rule, in the table's order.

    Parameters
    ----------
    obj : object
        A settings instance (any object with the attributes named in ``rules``).
    rules : mapping of str to Rule
        Field name → rule.
    error : subclass of InputError, default InputError
        What to raise (``loops.errors.SetupError`` for back-end settings).
    owner : str or None
        Name in the message; default ``type(obj).__name__``.

    Raises
    ------
    InputError (or ``error``)
        ``"{owner}.{field} must be {rule.what}, got {value!r}"`` for the first bad field.
    """
    owner = owner or type(obj).__name__
    for name, rule in rules.items():
        value = getattr(obj, name)
        if not rule.check(value):
            raise error(f"{owner}.{name} must be {rule.what}, got {value!r}")


def fingerprint_fields(settings: Any) -> dict[str, Any]:
    """``dataclasses.asdict(settings)`` without the fields marked ``{FINGERPRINT: False}``.

    What a run directory should record and compare: the fields that change results.

    Raises
    ------
    InputError
        ``settings`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise InputError(f"expected a settings dataclass instance, got {type(settings).__name__}")
    skip = {f.name for f in dataclasses.fields(settings) if not f.metadata.get(FINGERPRINT, True)}
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in skip}


__all__ = [
    "FINGERPRINT", "Rule", "boolean", "check_fields", "choice", "fingerprint_fields", "int_tuple",
    "integer", "is_int", "is_real", "nonnegative_real", "optional", "positive_real", "real_in",
]
