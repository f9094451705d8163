"""The serving benchmark's reference servers: the bare echo server, and the service's gRPC layer over a stub engine.

The echo server runs as ``python bench/serve_load.py --role echo`` (started by :func:`harness.serve.procs.start_echo`):
a bare grpc.aio server answering every request with a fixed response of the service's shape (session id,
position, five predictions), so the service's throughput against it isolates what the service adds to the
Python gRPC stack.

The stub server (``--role stub``) is the service's own transport half: :class:`service.api.servicer.SeqPredServicer`
with its handler wiring (:func:`service.api.servicer.add_to_server`), request conversion and reply building, and the
observing interceptor the server puts in front of it (:class:`service.api.observe.Observer`: request ids, per-request
histograms; no access log, no tracing, as the server by default), over a
:class:`StubEngine` that answers every request at once with a constant reply (no sessions, no onnxruntime). It
splits the service's cost into the gRPC layer (stub against echo) and the engine (service against stub).
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import numpy as np

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.api.observe import Observer
from service.api.servicer import SeqPredServicer, add_to_server
from service.engine.jobs import top_k_row
from service.engine.requests import Reply
from service.metrics import RpcStats
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime


def echo_response() -> pb.StreamResponse:
    r = pb.StreamResponse(session_id="e" * 22, position=1234, final=True)
    for i, ch in enumerate("etaoi"):
        r.predictions.add(id=i + 40, text=ch, logprob=-1.5 - i, prob=0.2 - 0.01 * i)
    return r


class EchoServicer(pb_grpc.SeqPredServicer):
    def __init__(self) -> None:
        self.resp = echo_response()

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        # the same read/write style as the service's handler (the faster of the two grpc.aio styles here)
        resp, read, write, EOF = self.resp, context.read, context.write, grpc.aio.EOF
        while (await read()) is not EOF:
            await write(resp)


class _NoBatcher:
    open_rpcs = 0  # the servicer counts its open RPCs here


class StubEngine:
    """Just enough of :class:`service.engine.core.Engine` for the servicer: a constant reply to every request."""

    metrics = None

    def __init__(self, vocab: int = 128) -> None:
        self.token_texts = [chr(32 + i % 95) for i in range(vocab)]
        self.batcher = _NoBatcher()

    def count_error(self, e: BaseException) -> None:
        pass

    async def request(self, r: Any) -> Any:
        top_ids, top_lps = [40, 41, 42, 43, 44], [-1.5, -2.5, -3.5, -4.5, -5.5]
        return Reply(r.session_id or "s" * 22, 1234, r.request_id, True, top_ids, top_lps)


class FloorEngine(StubEngine):
    """The stub plus the model's one unavoidable cost per request: a real ``step.onnx`` call and its top-k.

    Every request advances one shared state row by its first token on the service's own
    :class:`service.runtime.onnx_runtime.Runtime` (same session options), then takes the top-k of the log-probabilities
    as the service does; nothing else (no validation, session lookup, batching, metrics or bookkeeping).
    Only its timing means anything: the lowest per-request cost any engine over this model can have here.
    """

    def __init__(self, model: str) -> None:
        self.runtime = Runtime(load_bundle(model), "cpu", 1)
        super().__init__(self.runtime.config.vocab_size)
        self.memory = self.runtime.new_state_memory(1)
        self.slots = np.zeros(1, dtype=np.int64)

    async def request(self, r: Any) -> Any:
        if not r.tokens:  # the benchmark's closing request (end) carries none
            return await super().request(r)
        tokens = np.array(r.tokens[:1], dtype=np.int64)
        lp = self.runtime.step(self.memory, self.slots, tokens).logprobs
        assert lp is not None
        top_ids, top_lps = top_k_row(lp[0], r.top_k)
        return Reply(r.session_id or "s" * 22, 1234, r.request_id, True, top_ids, top_lps)


async def run_stub(model: str | None = None) -> None:
    """The service's gRPC layer (with its interceptor) over :class:`StubEngine`, or with ``model`` the bare servicer
    over :class:`FloorEngine`."""
    server = grpc.aio.server(interceptors=[Observer(RpcStats("stub"))] if model is None else None)
    engine = StubEngine() if model is None else FloorEngine(model)
    add_to_server(SeqPredServicer(engine), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("localhost:0")
    await server.start()
    print(f"seqpred: serving {'stub' if model is None else 'floor'} on port {port}", file=sys.stderr, flush=True)
    await server.wait_for_termination()


async def run_echo() -> None:
    server = grpc.aio.server()
    pb_grpc.add_SeqPredServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("localhost:0")
    await server.start()
    print(f"seqpred: serving echo on port {port}", file=sys.stderr, flush=True)
    await server.wait_for_termination()
