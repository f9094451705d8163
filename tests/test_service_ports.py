"""Ports, with real ``seqpred serve`` processes and real sockets: a busy port is one line naming the flag (exit 2),
and the ports actually bound (also when 0 was asked) are in the start-up log line, in both log formats."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import settings, tiny_model

from service.errors import SettingsError
from service.ports import bind_failure
from service.server import SeqpredServer

SEQPRED = [sys.executable, "-c", "import sys; from model.cli import main; sys.exit(main())"]


def serve_argv(*flags: str) -> list[str]:
    return [*SEQPRED, "serve", "--model", str(tiny_model()), *flags]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SEQPRED_")}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on (IPv6 wildcard, dual stack, like a second server would)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def test_busy_grpc_port_is_one_line_and_exit_2(busy_port: int) -> None:
    p = subprocess.run(
        serve_argv("--port", str(busy_port), "--metrics-port", "-1"), capture_output=True, text=True, env=env()
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        f"seqpred: error: --port: cannot listen on [::]:{busy_port}: Address already in use; "
        "pass another --port (0 picks a free one) or stop the program using it"
    ]


def test_busy_metrics_port_is_one_line_and_exit_2(busy_port: int) -> None:
    # the default metrics port taken by a first server was the crash of a second `seqpred serve --port N`
    p = subprocess.run(
        serve_argv("--port", "0", "--metrics-port", str(busy_port)), capture_output=True, text=True, env=env()
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        f"seqpred: error: --metrics-port: cannot listen on 0.0.0.0:{busy_port}: Address already in use; "
        "pass another --metrics-port (0 picks a free one, -1 turns the metrics off) or stop the program using it"
    ]


def test_an_address_that_is_not_here_names_host_and_port() -> None:
    assert bind_failure("localhost", 0) is None

    async def build() -> None:
        SeqpredServer(settings(host="192.0.2.1", port=5555))  # TEST-NET-1: never an address of this machine

    with pytest.raises(SettingsError) as e:
        asyncio.run(build())
    assert (
        str(e.value)
        == "--port: cannot listen on 192.0.2.1:5555: Cannot assign requested address; check --host and --port"
    )


def _started(proc: subprocess.Popen[str]) -> list[str]:
    """stderr lines up to and including 'seqpred: serving ...'."""
    assert proc.stderr is not None
    lines: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("seqpred: serving"):
            return lines
    raise AssertionError(f"the server did not start: {lines}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_bound_ports_are_logged_in_both_formats(fmt: str) -> None:
    proc = subprocess.Popen(
        serve_argv("--port", "0", "--metrics-port", "0", "--metrics-host", "localhost", "--log-format", fmt),
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        lines = _started(proc)
        serving = next(x for x in lines if "serving" in x and not x.startswith("seqpred:"))
        if fmt == "json":
            obj = json.loads(serving)
            assert obj["msg"] == "serving"
            port, metrics_port = obj["port"], obj["metrics_port"]
        else:
            m = re.search(r" INFO seqpred\.server: serving port=(\d+) metrics_port=(\d+) ", serving)
            assert m, serving
            port, metrics_port = int(m[1]), int(m[2])
        assert port > 0 and metrics_port > 0 and port != metrics_port
        assert lines[-1].endswith(f" on port {port}")
        with grpc.insecure_channel(f"localhost:{port}") as ch:  # both are really the ports bound
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1  # SERVING
        body = urllib.request.urlopen(f"http://localhost:{metrics_port}/metrics", timeout=10).read().decode()
        assert "seqpred_sessions_active" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
