# Two entry points for a fresh clone: `make demo` and `make test` (`make test-fast` skips the slow tests).
# Both create .venv on first use; re-running is fast because the install is
# stamped and only redone when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oed-installed
# Pinned first: an unpinned torch pulls several GB of CUDA wheels.
TORCH := torch==2.13.0

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/oed demo

# One test process per core (pytest-xdist); a test file stays on one process (--dist loadfile),
# since some files share a module-scoped fixture between tests (tutorial 2 reuses tutorial 1's run).
XDIST := -n auto --dist loadfile --durations=25

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST)

# While editing: everything but the `integration` tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not integration"

clean:
	rm -rf $(VENV) demo_run .oed_cache
