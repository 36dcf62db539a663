"""Error hierarchy shared by :mod:`oed` and :mod:`loops`.

Every error oed raises on purpose derives from :class:`OEDError`, so the
command line can turn it into one clear message and a non-zero exit instead
of a traceback. Input errors are also ``ValueError`` (scikit-learn style), so
callers that catch the built-in keep working.
"""

from __future__ import annotations


class OEDError(Exception):
    """Base class of every error raised on purpose by oed."""


class InputError(OEDError, ValueError):
    """Bad user input: a file, a parameter or a configuration value."""


class PoolError(InputError):
    """A structure file is missing, unreadable, malformed or empty."""


class UnknownElementError(InputError):
    """A structure holds an element the descriptor (or model) does not cover."""


class NotFittedError(OEDError, AttributeError):
    """A method that needs ``fit`` was called on an unfitted estimator."""
