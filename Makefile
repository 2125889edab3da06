# radinfer: `make run` serves on 127.0.0.1:8000, `make test` runs the test suite.
# Both create .venv when missing: torch first (pinned; pip finds the CPU wheel in the local wheelhouse when
# there is one), then the project with its dev and cpu extras. A stamp file makes a second run quick; it is
# rebuilt only when pyproject.toml (or this pin) changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP  := $(VENV)/.radinfer-installed
PYTEST_ARGS ?=

.PHONY: run test install clean-venv

run: $(STAMP)
	$(BIN)/radinfer serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -e '.[dev,cpu,postgres]'
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
