"""Shared by the service tests: tiny trained-and-exported models (built once per process) and a NumPy oracle.

The models are real: a run trained for 2 steps by ``seqpred train`` and exported by ``model.export.export_run``.
The oracle is the NumPy network (``model.network.forward``) on the run's own parameters, so it is independent of
onnxruntime and of the service.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from model.network import forward, log_softmax, zero_state
from model.train.checkpoint import load_run

#: The training text: ASCII only, so that e.g. "λ" is outside every test model's vocabulary.
CORPUS = (
    "def add(a, b):\n    return a + b\n\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "for i in range(10):\n    print(i * 2, 'hello world')\n"
) * 30

_TMP = Path(tempfile.mkdtemp(prefix="seqpred-service-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def tiny_run(cell: str = "lstm", layers: int = 2, tokenizer: str = "char") -> Path:
    return _tiny_run(cell, layers, tokenizer)


@cache
def _tiny_run(cell: str, layers: int, tokenizer: str) -> Path:
    from model.cli import main

    corpus = _TMP / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(CORPUS)
    out = _TMP / f"run-{cell}-{layers}-{tokenizer}"
    argv = [
        "train", "--corpus", str(corpus), "--steps", "2", "--hidden", "16", "--embed", "8", "--batch", "2",
        "--seq-len", "8", "--cell", cell, "--layers", str(layers), "--tokenizer", tokenizer,
        "--out", str(out), "--no-progress", "--eval-tokens", "200",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    assert rc == 0, f"training the tiny {cell} model failed"
    return out


def train_for(tmp_path: Path, cell: str, steps: int, layers: int = 1) -> Path:
    """A run of ``cell`` trained by ``seqpred train`` on :data:`CORPUS` for ``steps`` steps (enough to learn:
    lr 1e-2, batch 4 x 16), in ``tmp_path / run-{cell}``."""
    from model.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / f"run-{cell}"
    argv = [
        "train", "--corpus", str(corpus), "--cell", cell, "--layers", str(layers), "--steps", str(steps),
        "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16", "--lr", "1e-2", "--warmup", "2",
        "--eval-every", "1000", "--eval-tokens", "200", "--threads", "1", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out


def assert_runtime_matches_numpy(rt: Any, run: Any, text: str = "for i in range", atol: float = 3e-5) -> None:
    """A prompt through ``sequence.onnx`` then one ``step.onnx`` call in the service runtime ``rt`` equal the NumPy
    network of ``run`` (a loaded training run): token and next-token log-probs, and every state tensor."""
    ids = np.array(run.tokenizer.encode(text), dtype=np.int64)
    T = len(ids)
    mem = rt.new_state_memory(2)
    slot = np.array([1])
    mem.zero(1)
    seq = rt.sequence(mem, slot, ids[None, : T - 1], np.array([T - 1]))
    step = rt.step(mem, slot, ids[T - 1 :])
    f = forward(run.model, run.params, ids[None, :], zero_state(run.model, 1))
    want = log_softmax(f.out[:, :, 0], axis=0).T  # [T, V]: the distribution after each token
    assert seq.token_logprobs is not None and seq.next_logprobs is not None and step.logprobs is not None
    np.testing.assert_allclose(seq.token_logprobs[0], want[np.arange(T - 2), ids[1 : T - 1]], atol=atol)
    np.testing.assert_allclose(seq.next_logprobs[0], want[T - 2], atol=atol)
    np.testing.assert_allclose(step.logprobs[0], want[T - 1], atol=atol)
    expected = [x[0] for hc in f.state for x in hc if x is not None]
    got = mem.read(1)
    assert len(got) == len(expected)
    for g, w in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, w, atol=atol)


def tiny_model(cell: str = "lstm", layers: int = 2, tokenizer: str = "char") -> Path:
    return _tiny_model(cell, layers, tokenizer)


@cache
def _tiny_model(cell: str, layers: int, tokenizer: str) -> Path:
    from model.export import export_run

    return export_run(tiny_run(cell, layers, tokenizer), _TMP / f"model-{cell}-{layers}-{tokenizer}")


class Oracle:
    """NumPy log-probabilities of a token sequence from the zero state."""

    def __init__(self, run_dir: Path) -> None:
        run = load_run(run_dir)
        self.cfg, self.params, self.tokenizer = run.model, run.params, run.tokenizer
        assert self.tokenizer is not None
        self.V = self.cfg.vocab_size

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """``[T, V]``: row t is the distribution after ``ids[: t + 1]``."""
        x = np.asarray(ids, dtype=np.int64)[None, :]
        f = forward(self.cfg, self.params, x, zero_state(self.cfg, 1))
        return log_softmax(f.out[:, :, 0], axis=0).T

    def token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """``[T - 1]``: log p(ids[t + 1] | ids[: t + 1])."""
        lp = self.logprobs(ids)
        return lp[np.arange(len(ids) - 1), np.asarray(ids[1:], dtype=np.int64)]

    def next_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        return self.logprobs(ids)[-1]

    def top_k(self, ids: Sequence[int], k: int) -> list[int]:
        lp = self.next_logprobs(ids)
        return [int(i) for i in np.argsort(-lp, kind="stable")[:k]]

    def encode(self, text: str) -> list[int]:
        assert self.tokenizer is not None
        return [int(i) for i in self.tokenizer.encode(text)]


def oracle(cell: str = "lstm", layers: int = 2) -> Oracle:
    return _oracle(cell, layers)


@cache
def _oracle(cell: str, layers: int) -> Oracle:
    return Oracle(tiny_run(cell, layers))


def settings(**kw: Any) -> Any:
    from service.settings import Settings

    base: dict[str, Any] = {"model": tiny_model(), "port": 0, "metrics_port": -1, "host": "localhost"}
    base.update(kw)
    return Settings(**base)


@contextlib.contextmanager
def running_server(**kw: Any) -> Iterator[Any]:
    """A real server on port 0 in a background thread."""
    from service.server import ServerThread

    with ServerThread(settings(**kw)) as st:
        yield st


_REQUEST_ID = re.compile(r" \[request id ([ -~]{1,128})\]$")


def status_message(err: Any, strict: bool = True) -> str:
    """An error status's message without the server's ``" [request id ID]"`` suffix. ``strict``: the suffix must be
    there, naming the id the trailing metadata echoes (errors gRPC raises itself, e.g. for an oversized message,
    have none: pass ``strict=False``)."""
    details: str = err.details() or ""
    m = _REQUEST_ID.search(details)
    if strict:
        echoed = dict(err.trailing_metadata() or ()).get("x-request-id")
        assert m is not None and m[1] == echoed, (details, echoed)
    return details[: m.start()] if m else details
