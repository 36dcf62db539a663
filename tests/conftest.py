"""Shared fixtures: paths to the bundled data and small slices of it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ETHANOL = ROOT / "data" / "ethanol"


@pytest.fixture(scope="session")
def ethanol_dir() -> Path:
    return ETHANOL


@pytest.fixture(scope="session")
def ethanol_pool():
    from oed.io import read_structures

    return read_structures(ETHANOL / "train.xyz")


@pytest.fixture
def pinned():
    """Make files impossible to delete (immutable as root, a read-only folder otherwise)."""
    undo = []

    def pin(path: Path) -> None:
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not available here")
            undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))
        else:
            path.parent.chmod(0o555)
            undo.append(lambda: path.parent.chmod(0o755))

    yield pin
    for step in reversed(undo):
        step()


#: Test files that take minutes (CI --durations), collected first: pytest-xdist keeps a file on one
#: process and hands files out in collection order, so a slow file collected last leaves the
#: other process idle while it runs.
SLOW_FIRST = ("test_tutorials_compare.py", "test_tutorial_shift.py", "test_scf.py", "test_tutorial_forecast.py",
              "test_tutorials.py", "test_cli.py", "test_plan.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
