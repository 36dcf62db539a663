"""Errors of the outside-world layer; all derive from :class:`oed.errors.OEDError`.

Set-up errors (bad settings, a missing executable) are kept apart from run
failures (an SCF that does not converge), following ASE's calculator errors:
a run failure is recorded against the configuration, a set-up error stops the run.
"""

from __future__ import annotations

from oed.errors import InputError, OEDError


class LoopError(OEDError):
    """Base class of errors raised by :mod:`loops`."""


class SetupError(LoopError, InputError):
    """Bad settings for a labeller, a model or a loop (caught before any work)."""


class CalculationFailed(LoopError, RuntimeError):
    """A reference calculation ran but gave no trustworthy label."""


class SCFNotConverged(CalculationFailed):
    """The SCF did not converge: never turned into a label."""


class ModelFitError(LoopError, RuntimeError):
    """Fitting an interatomic potential failed (e.g. ``gap_fit`` exited non-zero)."""


class RunMismatchError(LoopError, InputError):
    """A run directory holds a run with other settings than the ones asked for."""


class RunLockedError(LoopError):
    """Another process is running in the same run directory."""
