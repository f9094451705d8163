# Two commands are all the set-up a user needs: `make run` and `make test`.
# Each creates or refreshes .venv and installs the project into it (idempotent: re-installs only when
# pyproject.toml changed), with the extras the tests use: dev, plot, import (safetensors) and torch (the CPU
# wheel, pinned to 2.13.0, for the PyTorch round trip of `seqpred import`).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 50051

.PHONY: install run train-demo test test-slow lint typecheck proto proto-check bench soak docker clean redis-server nginx

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot,import,torch,otel,ray]'
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

test: lint typecheck redis-server nginx
	$(PY) -m pytest

# The shared-store tests start their own redis-server (Debian's package); installed here when missing (needs root
# or sudo; if that fails, those tests are skipped and say why). Quiet and instant when it is already there.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get) for the shared-store tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; } \
	    >/dev/null 2>&1 || echo "warning: could not install redis-server; the shared-store tests will be skipped"; \
	}

# The balancer test (tests/test_deploy_nginx.py) runs Debian's nginx in front of two replicas; installed here when
# missing, like redis-server (the test skips and says why when nginx cannot be had).
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing nginx (apt-get) for the balancer test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light; } \
	    >/dev/null 2>&1 || echo "warning: could not install nginx; the balancer test will be skipped"; \
	}

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
	@echo "  $(PY) bench/export_speed.py  # sequence.onnx / step.onnx vs onnxruntime's native LSTM op (+ a floor graph)"
	@echo "  $(PY) bench/serve_load.py    # gRPC service vs a bare grpc.aio echo server (+ stub and floor servers)"
	@echo "  $(PY) bench/score_speed.py   # offline scoring vs PyTorch and the native op"
	@echo "  $(PY) bench/soak.py          # streams for minutes, disconnects, every response checked (make soak)"
	@echo "  $(PY) bench/import_speed.py  # an imported LSTM on seqpred's step graph vs the source ONNX file on onnxruntime"

# Soak the service (bench/soak.py): 32 streams for 5 minutes with random disconnects, every response checked
# offline; e.g. make soak SOAK_ARGS="--streams 16 --minutes 3" or SOAK_ARGS="--durability sync --kill-every 20".
soak: $(STAMP)
	$(PY) bench/soak.py --json $(SOAK_ARGS)

docker:
	docker build -t seqpred .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
