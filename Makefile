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

test: $(STAMP)
	$(BIN)/python -m pytest

# While editing: everything but the `integration` tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

clean:
	rm -rf $(VENV) demo_run .oed_cache
