"""``oed loop run --config loop.toml``: options from a TOML file, the command line overriding them.

Keys are the command's option names without the dashes (``init-from``, ``md-steps``,
``trust-lo``, …; ``_`` works too); ``test`` takes a list of files; ``temperatures`` a list of
K. Relative paths are read relative to the file. A ``[cluster]`` table runs the labels on a
batch system through dask-jobqueue::

    pool = "data/ethanol/train.xyz"
    test = ["data/ethanol/test_MD.xyz"]
    out = "runs/ethanol"
    explore = "md"
    temperatures = [300, 600]

    [cluster]
    kind = "slurm"          # slurm, pbs, sge, lsf, htcondor, moab, oar
    jobs = 4                # batch jobs to start (cluster.scale(jobs=…))
    cores = 8               # every other key goes to dask_jobqueue.SLURMCluster(...)
    memory = "16GB"
    walltime = "04:00:00"
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oed.errors import InputError

__all__ = ["CLUSTERS", "cluster_client", "load_config", "make_cluster", "merge_options"]

#: ``kind`` → dask-jobqueue class name.
CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
            "htcondor": "HTCondorCluster", "moab": "MoabCluster", "oar": "OARCluster"}
PATH_KEYS = {"pool", "test", "out_dir", "e0s", "init_from"}


def load_config(path: Path) -> tuple[dict, dict | None]:
    """``(options, cluster table or None)`` from a TOML file.

    Raises
    ------
    InputError
        Missing or malformed file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    cluster = data.pop("cluster", None)
    if cluster is not None and not isinstance(cluster, dict):
        raise InputError(f"{path}: cluster must be a table ([cluster])")
    return data, cluster


def merge_options(ctx, values: dict[str, Any], config: dict, base: Path) -> dict[str, Any]:
    """``values`` (the command's parameters) with ``config`` filling those not given on the line.

    ``ctx`` is the click context of the command: a parameter whose source is the command line
    (or the environment) keeps its value.

    Raises
    ------
    InputError
        A key that is no option of the command (the known ones are listed).
    """
    names = {}
    for p in ctx.command.params:
        names[p.name] = p.name
        for opt in p.opts:
            names[opt.lstrip("-")] = p.name
            names[opt.lstrip("-").replace("-", "_")] = p.name
    merged = dict(values)
    for key, value in config.items():
        name = names.get(key)
        if name is None or name == "config_file":
            known = sorted(o.lstrip("-") for p in ctx.command.params for o in p.opts if o.startswith("--"))
            raise InputError(f"unknown key {key!r} in the config file; options are: {', '.join(known)}")
        source = ctx.get_parameter_source(name)
        # by name: typer may bring its own copy of click's ParameterSource enum
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            continue  # the command line wins
        if name in PATH_KEYS:
            value = [base / v for v in value] if isinstance(value, list) else base / value
        elif name == "temperatures" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        merged[name] = value
    return merged


def make_cluster(table: dict):
    """A dask-jobqueue cluster from a ``[cluster]`` table (``kind``, ``jobs``, the class's keywords).

    Raises
    ------
    InputError
        No or unknown ``kind``, a bad ``jobs``, or keywords the cluster class refuses.
    """
    table = dict(table)
    kind = str(table.pop("kind", "")).lower()
    if kind not in CLUSTERS:
        raise InputError(f"[cluster] kind must be one of {', '.join(CLUSTERS)}, got {kind!r}")
    jobs = table.pop("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"[cluster] jobs must be a positive integer, got {jobs!r}")
    import dask_jobqueue

    cls = getattr(dask_jobqueue, CLUSTERS[kind])
    try:
        cluster = cls(**table)
    except (TypeError, ValueError) as exc:
        raise InputError(f"[cluster] settings refused by dask_jobqueue.{CLUSTERS[kind]}: {exc}") from None
    return cluster, jobs


@contextlib.contextmanager
def cluster_client(table: dict) -> Iterator[Any]:
    """A Dask client on a batch-system cluster started from ``table`` (jobs ended on exit)."""
    from distributed import Client

    cluster, jobs = make_cluster(table)
    with cluster:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            yield client
