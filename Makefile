# Two commands are all the set-up a user needs: `make run` and `make test`.
# Each creates or refreshes .venv and installs the project into it (idempotent: re-installs only when
# pyproject.toml changed).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN_DIR ?= runs/quickstart

.PHONY: install run test test-slow lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot]'
	@touch $(STAMP)

install: $(STAMP)

# Until the service exists: train a small model on the default corpus (the Python standard library's own
# sources) for about a minute, then print a sample from it.
run: $(STAMP)
	$(VENV)/bin/seqpred train --corpus stdlib --minutes 1 --out $(RUN_DIR) --overwrite
	$(VENV)/bin/seqpred sample $(RUN_DIR) --prompt "def __init__(self" --length 300

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
