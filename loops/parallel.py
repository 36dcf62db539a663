"""One way to run many independent calls: local spawned processes or a Dask cluster.

Labelling (PySCF, xTB, any ASE calculator) and fitting comparison cells all go through
:class:`Executor`: one thread limiter, one progress bar, results in input order, each
result handed to ``on_result`` the moment it arrives (so a label is committed before the
next one finishes). Built on :mod:`concurrent.futures` and :mod:`dask.distributed`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oed.errors import InputError

__all__ = ["Executor", "limit_threads", "progress_bar"]

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Give this process ``threads`` threads for BLAS, OpenMP (PySCF, tblite, gap_fit) and torch.

    The environment variables reach libraries loaded later (a spawned worker imports them
    after this runs) and child processes (``gap_fit``); threadpoolctl reaches the ones
    already loaded; PySCF and torch keep their own counters, set when they are loaded.
    """
    threads = max(1, int(threads))
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "pyscf" in sys.modules:
        from pyscf import lib

        lib.num_threads(threads)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, *args, **kwargs):
        pass


def progress_bar(enabled: bool):
    """A rich progress bar (description, bar, done/total, elapsed), or a silent stand-in."""
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn())


def _call_chunk(fn: Callable, threads: int, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    # Module level, so spawned processes and Dask workers can unpickle it.
    limit_threads(threads)
    return [(i, fn(item)) for i, item in items]


@dataclass(frozen=True)
class Executor:
    """Where independent calls run.

    Parameters
    ----------
    workers : int or None
        Local processes (spawned, not forked: forking a process whose OpenMP/BLAS threads
        have started can deadlock). ``None``: one per core, at most one per call. ``1`` runs
        in this process. Each of ``w`` processes gets ``max(1, cores // w)`` threads.
        Ignored when ``client`` is given.
    client : dask.distributed.Client or None
        Run on its workers instead, one thread per call (a Dask worker runs as many calls as
        it has threads). The workers must see the files the calls read and write.
    progress : bool
        Show a progress bar.
    threads : int or None
        Threads per local process instead of the cores' share (xTB runs fastest on one).

    Raises
    ------
    InputError
        ``workers`` is not a positive integer.
    """

    workers: int | None = None
    client: Any = None
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")

    def map(self, fn: Callable[[Any], Any], items: Sequence, *, description: str,
            on_result: Callable[[int, Any], None] | None = None, chunk: int = 1) -> list:
        """``[fn(item) for item in items]``, computed in parallel.

        Parameters
        ----------
        fn : callable
            A module-level function (it is pickled); exceptions it raises stop the map
            (queued calls are cancelled) and propagate.
        items : sequence
        description : str
            Progress-bar text.
        on_result : callable or None
            ``on_result(index, result)`` in this process, in completion order.
        chunk : int
            Items per task: more than one where a call takes milliseconds (xTB).

        Returns
        -------
        list
            Results in input order.
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        if not items:
            return results
        n_cpu = os.cpu_count() or 1
        indexed = list(enumerate(items))
        chunks = [indexed[s:s + chunk] for s in range(0, len(indexed), max(1, chunk))]
        with progress_bar(self.progress) as bar:
            task = bar.add_task(description, total=len(items))

            def collect(done: list[tuple[int, Any]]) -> None:
                for i, result in done:
                    results[i] = result
                    bar.advance(task)
                    if on_result is not None:
                        on_result(i, result)

            if self.client is not None:
                self._dask(fn, chunks, collect)
                return results
            workers = min(len(chunks), self.workers or n_cpu)
            threads = self.threads or max(1, n_cpu // workers)
            if workers == 1:
                for part in chunks:
                    collect([(i, fn(item)) for i, item in part])
                return results
            self._processes(fn, chunks, workers, threads, collect)
        return results

    def _processes(self, fn, chunks, workers: int, threads: int, collect) -> None:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from loops.interrupt import ignore_sigint

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=ignore_sigint)
        try:
            futures = [pool.submit(_call_chunk, fn, threads, part) for part in chunks]
            for future in as_completed(futures):
                collect(future.result())
        finally:
            # On an error queued calls are dropped rather than run unseen.
            pool.shutdown(wait=True, cancel_futures=True)

    def _dask(self, fn, chunks, collect) -> None:
        from distributed import as_completed

        futures = [self.client.submit(_call_chunk, fn, 1, part, pure=False) for part in chunks]
        try:
            for future in as_completed(futures):
                collect(future.result())
        finally:
            self.client.cancel(futures)


@contextlib.contextmanager
def dask_client(scheduler: str | None):
    """A :class:`dask.distributed.Client` connected to ``scheduler``, or ``None`` without one."""
    if not scheduler:
        yield None
        return
    from distributed import Client

    with Client(scheduler) as client:
        yield client
