"""Smoke runs of the compare tutorials 03, 06, 07 and 08 (01 and 02 are in test_tutorials.py, 09 in test_tutorial_shift.py).

A file of their own so that pytest-xdist, which keeps a file on one process, runs them beside
the others instead of after them.
"""

from __future__ import annotations

import pytest
from test_tutorials import COMPARE_TUTORIALS, SMOKE_HERE, check_compare_smoke


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("compare_tutorials_more")


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in COMPARE_TUTORIALS if n not in SMOKE_HERE])
def test_compare_tutorial_smoke_runs_and_rerun_fits_nothing(name, smoke_dir):
    check_compare_smoke(name, smoke_dir)
