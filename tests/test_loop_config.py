"""oed loop run --config: TOML options, command-line overrides, [cluster] tables through dask-jobqueue."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loops.cli import app
from loops.loop_config import load_config, make_cluster
from oed.errors import InputError


def test_cluster_table_builds_a_real_jobqueue_script():
    cluster, jobs = make_cluster({"kind": "slurm", "jobs": 3, "cores": 4, "memory": "8GB", "walltime": "01:00:00",
                                  "queue": "short"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 3
    assert "#SBATCH -p short" in script and "#SBATCH -t 01:00:00" in script and "--nthreads" in script
    for bad in ({"kind": "mainframe"}, {"kind": "slurm", "jobs": 0}, {"kind": "slurm", "cores": 2, "bogus": 1}):
        with pytest.raises(InputError):
            make_cluster(bad)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("rounds = = 3")
    with pytest.raises(InputError, match="TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text('strategi = "fps"\n')
    r = CliRunner().invoke(app, ["loop", "run", "--config", str(tmp_path / "unknown.toml")])
    assert r.exit_code != 0 and "unknown key 'strategi'" in r.output and "init-from" in r.output


@pytest.mark.integration
def test_config_file_runs_and_the_command_line_wins(tmp_path, ethanol_dir):
    from ase.io import read, write

    write(tmp_path / "pool.xyz", read(ethanol_dir / "train.xyz", ":30"))
    write(tmp_path / "test.xyz", read(ethanol_dir / "test_MD.xyz", ":5"))
    (tmp_path / "loop.toml").write_text(
        'pool = "pool.xyz"\ntest = ["test.xyz"]\nout = "run"\noracle = "pool"\nstrategy = "fps"\n'
        "init = 4\nbatch = 2\nrounds = 1\nworkers = 1\n")
    r = CliRunner().invoke(app, ["loop", "run", "--config", str(tmp_path / "loop.toml"), "--batch", "3"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["batch_size"] == 3 and config["n_init"] == 4 and config["strategy"] == "fps"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [row["n_labelled"] for row in results] == [4, 7]
    r = CliRunner().invoke(app, ["loop", "run", "--config", str(tmp_path / "loop.toml")])
    assert r.exit_code != 0 and "batch_size: 3 → 2" in r.output
