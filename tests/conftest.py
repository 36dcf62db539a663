"""Shared fixtures: paths to the bundled data and small slices of it."""

from __future__ import annotations

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
