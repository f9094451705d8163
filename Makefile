# Two commands are all the set-up a user needs: `make run` and `make test`.
# Each creates or refreshes .venv and installs the project into it (idempotent: re-installs only when
# pyproject.toml changed).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 50051

.PHONY: install run train-demo test test-slow lint typecheck proto proto-check bench docker clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot]'
	@touch $(STAMP)

install: $(STAMP)

# Serve the shipped default model (service/default_model: a char LSTM trained on Python's stdlib) on $(PORT).
# Talk to it with: .venv/bin/seqpred client "def __init__(self"
run: $(STAMP)
	$(VENV)/bin/seqpred serve --port $(PORT)

# Train a small model on the default corpus for about a minute and print a sample from it.
train-demo: $(STAMP)
	$(VENV)/bin/seqpred train --corpus stdlib --max-vocab 128 --minutes 1 --out runs/demo --overwrite
	$(VENV)/bin/seqpred sample runs/demo --prompt "def __init__(self" --length 300

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Regenerate the gRPC stubs in service/_proto from proto/ (never edit them by hand).
proto: $(STAMP)
	$(PY) -m service.gen_proto

proto-check: $(STAMP)
	$(PY) -m service.gen_proto --check

bench: $(STAMP)
	@echo "benchmarks (each prints a table; --json adds one JSON object on the last line):"
	@echo "  $(PY) bench/train_speed.py   # NumPy trainer vs PyTorch nn.LSTM (needs torch==2.13.0)"
	@echo "  $(PY) bench/quality.py       # Tiny Shakespeare recipe, validation nats/char in 10 minutes"
	@echo "  $(PY) bench/export_speed.py  # sequence.onnx / step.onnx vs onnxruntime's native LSTM op"
	@echo "  $(PY) bench/serve_load.py    # gRPC service vs a bare grpc.aio echo server"
	@echo "  $(PY) bench/score_speed.py   # offline scoring vs PyTorch and the native op"

docker:
	docker build -t seqpred .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
