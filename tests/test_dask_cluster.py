"""A Dask worker killed mid-label (issue 11, "Clusters"): the label is retried elsewhere, stored once.

A real ``dask.distributed.LocalCluster`` of two single-threaded worker processes labels four
ethanol configurations with PySCF (pbe/def2-svp, a few seconds each) through
:class:`loops.oracles.LabelBook`; one worker process is killed with SIGKILL while it runs an
SCF. The scheduler hands its task to the other worker (or the nanny's replacement), so the map
completes, every configuration has exactly one row in labels.db and every energy is finite.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent.parent / "data" / "ethanol"


@pytest.mark.integration
def test_worker_killed_mid_label_is_retried_and_labelled_once(tmp_path):
    distributed = pytest.importorskip("distributed")
    from ase.io import read

    from loops.oracles import LabelBook, PySCFOracle, bare
    from loops.parallel import Executor
    from loops.store import LabelStore
    from oed.io import REF_ENERGY, REF_FORCES, structure_hash

    frames = [bare(a, i) for i, a in enumerate(read(DATA / "train.xyz", "::250"))]  # 4 configurations
    assert len(frames) == 4
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)  # worker address -> pid of the worker process (not the nanny)
        book = LabelBook(PySCFOracle("pbe/def2-svp", executor=Executor(client=client, progress=False)),
                         tmp_path / "labels.db", frames)
        out: dict = {}

        def label() -> None:
            try:
                out["labels"] = book.labels(range(len(frames)))
            except BaseException as exc:  # handed to the test thread, which re-raises it
                out["error"] = exc

        worker = threading.Thread(target=label, daemon=True)
        worker.start()
        # wait until a worker is running an SCF (a task in processing, no row committed yet), then kill it
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline and worker.is_alive():
            busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
            if busy:
                time.sleep(1.0)  # well inside the SCF: importing PySCF and building the molecule come first
                rows = len(LabelStore(tmp_path / "labels.db", book.oracle.name)) \
                    if (tmp_path / "labels.db").exists() else 0
                if rows < len(frames) and client.processing().get(busy[0]):
                    victim = busy[0]
                    os.kill(pids[victim], signal.SIGKILL)
                    break
            time.sleep(0.05)
        assert victim is not None, "no worker was seen labelling"
        rows_at_kill = rows
        worker.join(timeout=600)
        assert not worker.is_alive(), "labelling did not finish after a worker died"
        if "error" in out:
            raise out["error"]
        # the killed process is gone from the cluster (the nanny may have started a new one)
        assert victim not in client.scheduler_info()["workers"]

    assert rows_at_kill < len(frames)
    labels = out["labels"]
    assert sorted(labels) == [0, 1, 2, 3] and all(a is not None for a in labels.values())
    for a in labels.values():
        assert np.isfinite(a.info[REF_ENERGY]) and np.all(np.isfinite(a.arrays[REF_FORCES]))
        assert a.arrays[REF_FORCES].shape == (9, 3)
    # exactly one row per configuration, read from ase.db's SQLite tables directly
    con = sqlite3.connect(tmp_path / "labels.db")
    keys = [k for (k,) in con.execute("SELECT value FROM text_key_values WHERE key = 'key'")]
    con.close()
    assert sorted(keys) == sorted(structure_hash(a) for a in frames)
