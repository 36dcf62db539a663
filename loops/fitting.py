"""What the interatomic-potential back-ends share around a fit (GAP, MACE).

Both back-ends fit by running an external program in a work directory: ``gap_fit``
(:mod:`loops.gap`) or ``python -m mace.cli.run_train`` (:mod:`loops.mace`). The plumbing is
the same and lives here, once:

- :func:`training_frames` / :func:`training_frame`: bare, checked copies of the labelled
  configurations (geometry, ``REF_energy`` in eV, ``REF_forces`` in eV/Å, ``config_type``);
  :func:`species_e0s`: the isolated-atom energies of the elements present;
- :func:`clear_fit_files`: the files of an earlier fit removed before a new one (a stale
  potential must not pass for the new one), with an error naming any that cannot be removed;
- :class:`FitProgram`: run the program with its output in a log, **with a time limit** (the
  whole process group is killed when it runs out), and turn a failure into a
  :class:`~loops.errors.ModelFitError` that quotes the program's reason, the log's last lines
  and the log's path;
- :func:`forget_fit`: the fitted attributes dropped, so that a failed fit leaves an unfitted
  model, never a half-fitted or stale one (scikit-learn's trailing-underscore convention);
- :func:`remove_fit_dir`: a finished fit's files removed, with a warning naming what could
  not be;
- :class:`SubprocessModel`: the ``fit`` of such a back-end, once — a back-end only says what to
  run (:class:`FitPlan`), and how to predict.

Inputs are written with :func:`oed.io.write_structures` (atomic: a crash leaves the old file or
the new one, never half of one).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from loops.errors import ModelFitError, SetupError
from oed.errors import InputError, NotFittedError, UnknownElementError
from oed.io import REF_ENERGY, REF_FORCES, reference_energy, reference_forces, write_structures

#: Lines of a fit's log quoted in a ModelFitError.
LOG_TAIL_LINES = 20
#: Default time limit of one fit (s): 6 h, about 20 times the longest fit measured here
#: (a 1000-configuration ethanol GAP, 17 min on a shared machine); ``None`` in the settings
#: means no limit.
DEFAULT_TIMEOUT_S = 6 * 3600.0
#: Seconds to wait for a killed program to be reaped.
_REAP_S = 30.0
#: Characters that make a stale-file name a glob pattern.
_GLOB = re.compile(r"[*?\[]")


def fmt_float(x: float) -> str:
    """A float as the fitting programs read it, without losing precision (``repr``: 1e-08, -13.56…)."""
    return repr(float(x))


def find_program(name: str, install: str) -> str:
    """Path of an executable: beside the running Python first, then on ``PATH``.

    A virtual environment's ``bin`` holds the programs its packages install but is not on
    ``PATH`` unless activated.

    Raises
    ------
    SetupError
        Not found; the message says where it looked and how to install it (``install``).
    """
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise SetupError(
        f"{name} executable not found (looked beside the Python interpreter {sys.executable} "
        f"and on PATH); install it with {install}"
    )


def program_env(*, threads: int | None = None, unset: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment for a fitting program.

    ``unset`` removed, ``extra`` added, and the OpenMP / MKL / OpenBLAS thread counts set to
    ``threads`` (``None``: left as they are).
    """
    unset = set(unset)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra)
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(int(threads))
    return env


def symbols_by_z(species: Iterable[str]) -> list[str]:
    """Distinct chemical symbols sorted by atomic number.

    Raises
    ------
    SetupError
        An unknown symbol (or the dummy ``X``).
    """
    out = set()
    for s in species:
        if s not in atomic_numbers or s == "X":
            raise SetupError(f"unknown chemical symbol {s!r}")
        out.add(s)
    return sorted(out, key=atomic_numbers.__getitem__)


def training_frame(i: int, atoms: Atoms) -> Atoms:
    """A bare copy of training configuration ``i``: geometry, ``REF_energy`` and ``REF_forces``.

    The reference is read from ``REF_energy``/``REF_forces`` or plain ``energy``/``forces``
    (eV, eV/Å); nothing else is carried over (back-ends add what they keep, e.g. ``config_type``).

    Raises
    ------
    InputError
        No atoms, no reference energy or forces, a non-finite energy, or forces that are not
        finite with shape ``(n_atoms, 3)`` — the message names configuration ``i``.
    """
    if len(atoms) == 0:
        raise InputError(f"training configuration {i} has no atoms")
    energy = reference_energy(atoms)
    forces = reference_forces(atoms)
    if energy is None or forces is None:
        lacking = " and ".join(w for w, v in (("energy", energy), ("forces", forces)) if v is None)
        raise InputError(f"training configuration {i} has no reference {lacking}")
    if not math.isfinite(energy):
        raise InputError(f"training configuration {i} has a non-finite reference energy")
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise InputError(
            f"training configuration {i}: reference forces must be finite with shape "
            f"({len(atoms)}, 3), got shape {forces.shape}"
        )
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.info[REF_ENERGY] = float(energy)
    clean.arrays[REF_FORCES] = np.array(forces, dtype=float)
    return clean


def training_frames(frames: Iterable[Atoms], *, who: str) -> list[Atoms]:
    """:func:`training_frame` of every configuration, ``config_type`` kept.

    Parameters
    ----------
    frames : iterable of ase.Atoms
    who : str
        Names the caller in the error for an empty set (``"GAPModel.fit"``).

    Raises
    ------
    InputError
        No configurations, or one that :func:`training_frame` refuses.
    """
    out = []
    for i, atoms in enumerate(frames):
        clean = training_frame(i, atoms)
        if "config_type" in atoms.info:
            clean.info["config_type"] = atoms.info["config_type"]
        out.append(clean)
    if not out:
        raise InputError(f"no training configurations given to {who}")
    return out


def species_e0s(symbols: Iterable[str], e0s: Mapping[str, float]) -> dict[str, float]:
    """The isolated-atom energies (eV) of the training set's elements, ordered by atomic number.

    Raises
    ------
    SetupError
        An unknown chemical symbol, or an element without a finite E0.
    """
    species = set(symbols)
    unknown = sorted(s for s in species if s not in atomic_numbers or s == "X")
    if unknown:
        raise SetupError(f"unknown chemical symbol(s) {', '.join(map(repr, unknown))}")
    species = sorted(species, key=atomic_numbers.__getitem__)
    missing = [s for s in species if s not in e0s]
    if missing:
        raise SetupError(f"no isolated-atom energy (E0) for element(s) {', '.join(missing)} of the training set")
    used = {s: float(e0s[s]) for s in species}
    bad = [s for s, v in used.items() if not math.isfinite(v)]
    if bad:
        raise SetupError(f"non-finite E0 for element(s) {', '.join(bad)}")
    return used


def check_elements(frames: Sequence[Atoms], species: Iterable[str], *, model: str, verb: str = "fitted") -> None:
    """Refuse configurations without atoms or with elements a fitted model has never seen.

    Raises
    ------
    InputError
        A configuration without atoms (named).
    UnknownElementError
        Names the configuration, its unknown elements and the model's own.
    """
    species = tuple(species)
    known = set(species)
    for i, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise InputError(f"configuration {i} has no atoms")
        unknown = sorted(set(atoms.get_chemical_symbols()) - known, key=atomic_numbers.__getitem__)
        if unknown:
            raise UnknownElementError(
                f"configuration {i} holds element(s) {', '.join(unknown)} that the {model} model "
                f"was not {verb} on ({verb} on {', '.join(species)})"
            )


def forget_fit(model: Any, private: Iterable[str] = ()) -> None:
    """Drop a model's fitted state: attributes ending in ``_`` and the ``private`` caches named.

    Called at the start of ``fit`` so that a fit that fails leaves the model unfitted.
    """
    private = set(private)
    for name in [n for n in vars(model) if (n.endswith("_") and not n.startswith("__")) or n in private]:
        del model.__dict__[name]


def clear_fit_files(paths: Iterable[Path]) -> None:
    """Remove files (and folders) left by an earlier fit; absent ones are fine.

    Raises
    ------
    SetupError
        Naming every path that could not be removed and why: a leftover potential could be
        taken for the new one, so the fit does not start.
    """
    failed = []
    for path in paths:
        path = Path(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append(f"{path} ({exc.strerror or exc})")
    if failed:
        raise SetupError(
            "cannot remove the files of an earlier fit: " + "; ".join(failed)
            + " — remove them by hand or fit in another work directory"
        )


def remove_fit_dir(workdir: str | os.PathLike) -> list[Path]:
    """Delete a finished fit's work directory; warn about anything that stays.

    Returns
    -------
    list of pathlib.Path
        What could not be removed (empty when all went).

    Warns
    -----
    RuntimeWarning
        Naming the paths left behind (a fit's files are large: a silent leftover fills disks).
    """
    left: list[Path] = []

    def record(_func, path, _exc_info):
        left.append(Path(path))

    workdir = Path(workdir)
    if workdir.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(workdir, onexc=record)
        else:
            shutil.rmtree(workdir, onerror=record)
    if left:
        shown = ", ".join(map(str, left[:5])) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        warnings.warn(f"could not remove {len(left)} file(s) of a finished fit: {shown}", RuntimeWarning, stacklevel=2)
    return left


@dataclass(frozen=True)
class FitProgram:
    """How to run one fitting program and read its log.

    Attributes
    ----------
    name : str
        The program in messages (``"gap_fit"``, ``"mace run_train"``).
    speaker : str
        Prefix of its quoted reason: ``"{speaker} says: ..."``.
    reasons : re.Pattern
        Lines of the log in which the program states why it stopped.
    every_reason : bool, default False
        Quote every such line (gap_fit: its abort line sits near the top of the log) rather
        than the last one (a Python traceback ends with the exception).
    hint : str or None
        Appended when the log holds no reason; ``{log}`` is replaced by the log's path.
    """

    name: str
    speaker: str
    reasons: re.Pattern
    every_reason: bool = False
    hint: str | None = None

    def report(self, log_path: Path, n: int = LOG_TAIL_LINES) -> str:
        """The program's reason for stopping (when the log states one) and the log's last ``n`` lines."""
        log_path = Path(log_path)
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {log_path})"
        reasons = [ln.strip() for ln in lines if self.reasons.search(ln)]
        tail = [ln for ln in lines if ln.strip()][-n:]
        text = f"Last {len(tail)} lines of {log_path}:\n" + "\n".join(tail)
        if reasons:
            said = " | ".join(reasons) if self.every_reason else reasons[-1]
            return f"{self.speaker} says: {said}\n{text}"
        return text + (self.hint.format(log=log_path) if self.hint else "")

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        output: Path,
        what: str,
        timeout_s: float | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Run ``argv`` in ``cwd`` (stdout and stderr to ``log_path``) until it writes ``output``.

        The program runs in its own process group; when ``timeout_s`` (s; ``None``: no limit)
        runs out, or this process is interrupted, the whole group is killed, so no orphaned
        fit keeps a core. A partly written ``output`` is removed after a timeout.

        Raises
        ------
        SetupError
            The program cannot be started.
        ModelFitError
            It ran past ``timeout_s``, exited non-zero, or exited 0 without writing ``output``
            (called ``what`` in the message); the message quotes :meth:`report` and names the
            work directory.
        """
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(
                    list(argv), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                    env=None if env is None else dict(env), start_new_session=True,
                )
            except OSError as exc:
                raise SetupError(f"cannot run {argv[0]}: {exc}") from exc
            try:
                status = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                Path(output).unlink(missing_ok=True)
                raise ModelFitError(
                    f"{self.name} did not finish within timeout_s={timeout_s:g} s and was killed "
                    f"(work directory {cwd}; log {log_path}); raise the settings' timeout_s, or "
                    f"set it to None for no limit.\n{self.report(log_path)}"
                ) from None
            except BaseException:  # KeyboardInterrupt, SystemExit: do not leave the fit running
                _kill_group(proc)
                raise
        if status != 0 or not Path(output).is_file():
            why = (
                f"{self.name} exited with status {status}" if status != 0
                else f"{self.name} exited 0 but wrote no {what}"
            )
            raise ModelFitError(f"{why} (work directory {cwd}).\n{self.report(log_path)}")


@dataclass(frozen=True)
class FitPlan:
    """What one fit runs, as a back-end's :meth:`SubprocessModel._plan` decides it.

    Attributes
    ----------
    argv : list of str
        The command line (executable first), run in the work directory.
    inputs : mapping of str to list of ase.Atoms
        Files (names in the work directory) to write as extxyz before the run.
    output : str
        The file a successful run writes (a potential, a model); its absence is a failure.
    what : str
        That file in words (``"potential"``), for the error when it is missing.
    stale : tuple of str
        Names or glob patterns, in the work directory, of an earlier fit's files to remove first.
    fitted : mapping of str to object
        Fitted attributes (names ending in ``_``) set on the model after a successful run.
    env : mapping of str to str or None
        The program's environment; ``None``: this process's.
    """

    argv: list[str]
    inputs: Mapping[str, list[Atoms]]
    output: str
    what: str
    stale: tuple[str, ...] = ()
    fitted: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] | None = None


class SubprocessModel:
    """Base of the back-ends fitted by an external program in a work directory.

    ``__init__`` only stores the settings (a frozen dataclass, ``settings_class``; ``None`` means
    its defaults). :meth:`fit` is the same for every such back-end: drop any earlier fit,
    validate the settings, check the frames (:func:`training_frames`), ask the back-end for a
    :class:`FitPlan`, clear the earlier fit's files, write the inputs atomically, run the program
    under the settings' ``timeout_s`` (:class:`FitProgram`), and only then set the fitted
    attributes. A subclass sets ``settings_class``, ``program``, ``log_file``, ``fitted_file``
    (the attribute that marks a fit), ``caches`` (private attributes that are neither pickled
    nor kept across a refit) and, optionally, ``fit_hint`` (the advice of the not-fitted error),
    and implements ``_plan``.
    """

    settings_class: ClassVar[type]
    program: ClassVar[FitProgram]
    log_file: ClassVar[str]
    fitted_file: ClassVar[str]
    caches: ClassVar[tuple[str, ...]] = ()
    fit_hint: ClassVar[str] = "call fit() first"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def __getstate__(self) -> dict[str, Any]:
        # heavy in-process objects (a quippy potential, a torch module) are rebuilt from the file
        return {k: v for k, v in self.__dict__.items() if k not in self.caches}

    def _settings(self) -> Any:
        return self.settings if self.settings is not None else self.settings_class()

    def _check_fitted(self) -> None:
        if not hasattr(self, self.fitted_file):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: {self.fit_hint}")

    def _plan(self, train: list[Atoms], e0s: Mapping[str, float], settings: Any, work: Path) -> FitPlan:
        """The fit's command, inputs and fitted attributes (the back-end's part of :meth:`fit`)."""
        raise NotImplementedError

    def fit(self, frames: Sequence[Atoms], *, e0s: Mapping[str, float], workdir: str | os.PathLike):
        """Fit on labelled configurations with the back-end's program.

        Whatever is raised, the model is unfitted afterwards: a refit that fails does not keep
        the earlier fit. The settings must have ``validate()`` and ``timeout_s``.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Training configurations, each with a reference energy (eV) and forces (eV/Å) under
            ``REF_energy`` / ``REF_forces`` or plain ``energy`` / ``forces``; ``config_type``
            is kept.
        e0s : mapping of str to float
            Isolated-atom energy in eV for every element of ``frames`` (others are ignored).
        workdir : path
            Directory (created if needed) receiving the inputs, the program's log and output;
            the files of an earlier fit there are removed first.

        Returns
        -------
        self

        Raises
        ------
        InputError
            No frames, or a frame without atoms or without a finite reference energy and
            forces of shape ``(n_atoms, 3)`` (its index is named).
        SetupError
            Bad settings, an element without a finite E0, the program missing, or files of an
            earlier fit that cannot be removed (named).
        ModelFitError
            The program exited non-zero, wrote no output, or ran past ``settings.timeout_s``
            (its reason, when it gives one, the log's last lines and the log's path are quoted).
        """
        forget_fit(self, private=self.caches)
        settings = self._settings()
        settings.validate()
        train = training_frames(frames, who=f"{type(self).__name__}.fit")
        work = Path(workdir).resolve()
        plan = self._plan(train, e0s, settings, work)
        work.mkdir(parents=True, exist_ok=True)
        clear_fit_files(p for pattern in plan.stale
                        for p in (sorted(work.glob(pattern)) if _GLOB.search(pattern) else [work / pattern]))
        for name, configs in plan.inputs.items():
            write_structures(work / name, configs)
        self.program.run(plan.argv, cwd=work, log_path=work / self.log_file, output=work / plan.output,
                         what=plan.what, timeout_s=settings.timeout_s, env=plan.env)
        for name, value in plan.fitted.items():
            setattr(self, name, value)
        return self


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (``start_new_session``), then reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=_REAP_S)
    except subprocess.TimeoutExpired:
        pass  # unkillable (uninterruptible I/O): the OS reaps it later


__all__ = [
    "DEFAULT_TIMEOUT_S", "FitPlan", "FitProgram", "LOG_TAIL_LINES", "SubprocessModel", "check_elements",
    "clear_fit_files", "find_program", "fmt_float", "forget_fit", "program_env", "remove_fit_dir",
    "species_e0s", "symbols_by_z", "training_frame", "training_frames",
]
