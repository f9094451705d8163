"""The serving benchmark's server subprocesses: the service and the echo server, with their CPU time and RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
SERVE_LOAD = Path(__file__).resolve().parents[2] / "serve_load.py"  # bench/harness/serve/procs.py -> bench/


class Proc:
    """A server subprocess; its port is read from the 'seqpred: serving ... on port N' line on stderr."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        assert self.p.stderr is not None
        self.tail: list[str] = []
        port = None
        t0 = time.monotonic()
        while port is None:
            line = self.p.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited: {' '.join(argv)}\n{''.join(self.tail)}")
            self.tail.append(line)
            if line.startswith("seqpred: serving"):
                port = int(line.rsplit(" ", 1)[1])
            if time.monotonic() - t0 > 120:
                raise RuntimeError("server did not start")
        self.port = port
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.tail = ([*self.tail, line])[-50:]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start_service(model: Path, *extra: str) -> Proc:
    code = "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--model", str(model), "--host", "localhost", "--port", "0"]
    return Proc([*argv, "--metrics-port", "-1", "--log-level", "WARNING", *extra])


def start_echo() -> Proc:
    return Proc([sys.executable, str(SERVE_LOAD), "--role", "echo"])


def start_stub(model: Path | None = None) -> Proc:
    """The service's gRPC layer over a constant-reply engine, or with ``model`` over one onnxruntime step per
    request (``harness.serve.echo.run_stub``)."""
    if model is None:
        return Proc([sys.executable, str(SERVE_LOAD), "--role", "stub"])
    return Proc([sys.executable, str(SERVE_LOAD), "--role", "floor", "--model", str(model)])
