"""SIGTERM and SIGINT end a run cleanly: children first, then one line and a non-zero exit.

A batch scheduler's SIGTERM (or Ctrl-C) must not leave labelling workers, the
multiprocessing resource tracker or a ``gap_fit`` running on as orphans, nor print a
traceback: everything a run commits is already on disk (labels one row at a time, cells
atomically), so the same command resumes. :func:`handling_signals` installs the handlers;
worker processes ignore SIGINT (:func:`ignore_sigint`) so that a Ctrl-C sent to the whole
terminal group reaches only the parent, which ends them.
"""

from __future__ import annotations

import contextlib
import signal
import time

__all__ = ["Interrupted", "end_children", "handling_signals", "ignore_sigint"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


class Interrupted(BaseException):
    """The run was stopped by a signal (not an ``Exception``: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _is_resource_tracker(process) -> bool:
    # multiprocessing's resource tracker exits by itself once this process has exited (its pipe
    # closes); killed first, it is relaunched by the pool's clean-up and prints a traceback.
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except Exception:  # psutil.Error: the process is gone or not ours to read
        return False


def end_children(timeout: float = 5.0) -> int:
    """Terminate every descendant process (SIGTERM, then SIGKILL after ``timeout`` s).

    multiprocessing's resource tracker is left to exit with this process. Returns the number
    of processes ended.
    """
    import psutil

    try:
        children = [p for p in psutil.Process().children(recursive=True) if not _is_resource_tracker(p)]
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    alive = _wait_without_reaping(children, timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    _wait_without_reaping(alive, timeout)
    return len(children)


def _wait_without_reaping(processes, timeout: float) -> list:
    """Wait until each process has exited; a zombie counts as exited and is left unreaped.

    Reaping (``waitpid``) here would steal the exit status from whoever started the child:
    concurrent.futures' manager thread then waits for ever for workers it believes alive.
    """
    import psutil

    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        still = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.Error:  # gone
                pass
        alive = still
        if alive:
            time.sleep(0.02)
    return alive


def _handler(signum, frame) -> None:
    if _received:  # a second signal while stopping: the first is being handled
        return
    _received.append(signum)
    end_children()
    raise Interrupted(signum)


def received() -> int | None:
    """The signal that stopped this process, or None."""
    return _received[0] if _received else None


@contextlib.contextmanager
def handling_signals():
    """Inside the block, SIGTERM and SIGINT end the children and raise :class:`Interrupted`."""
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_sigint() -> None:
    """Initializer of worker processes: the parent alone handles Ctrl-C (and ends them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
