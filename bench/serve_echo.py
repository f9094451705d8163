"""The serving benchmark's echo server: a bare grpc.aio server answering every request with a fixed response.

It runs as ``python bench/serve_load.py --role echo`` (started by :func:`serve_procs.start_echo`). Its response has
the shape of the service's (session id, position, five predictions), so the service's throughput against it
isolates what the service adds to the Python gRPC stack.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc


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


async def run_echo() -> None:
    server = grpc.aio.server()
    pb_grpc.add_SeqPredServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("localhost:0")
    await server.start()
    print(f"seqpred: serving echo on port {port}", file=sys.stderr, flush=True)
    await server.wait_for_termination()
