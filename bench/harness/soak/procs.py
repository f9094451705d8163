"""The soak benchmark's processes: the server under test (start, SIGKILL, restart) and the checker's worker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from harness.soak.check import Segment, Verdict, init_worker, worker_check

REPO = Path(__file__).resolve().parents[3]  # bench/harness/soak/procs.py -> the repository
TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """The server subprocess; its port comes from the 'seqpred: serving ... on port N' line on stderr."""

    def __init__(self, model: Path, extra: list[str]) -> None:
        self.model, self.extra = model, extra
        self.tail: list[str] = []
        self.port = 0
        self.p: subprocess.Popen[str] | None = None

    def start(self) -> None:
        code = "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))"
        argv = [sys.executable, "-c", code, "--model", str(self.model), "--host", "localhost"]
        argv += ["--port", str(self.port), "--metrics-port", "-1", "--log-level", "WARNING", *self.extra]
        self.p = p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert p.stderr is not None
        t0 = time.monotonic()
        while True:
            line = p.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited with {p.wait()}:\n{''.join(self.tail[-20:])}")
            self.tail.append(line)
            if line.startswith("seqpred: serving"):
                self.port = int(line.rsplit(" ", 1)[1])
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError("server did not start in 120 s")
        threading.Thread(target=self._drain, args=(p,), daemon=True).start()

    def _drain(self, p: subprocess.Popen[str]) -> None:
        assert p.stderr is not None
        for line in p.stderr:
            self.tail = [*self.tail[-49:], line]

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.p is not None
        self.p.kill()
        self.p.wait()

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


class Checker:
    """Batches finished segments and checks them in one worker process while the soak runs."""

    def __init__(self, model: Path, run: str | None, tol: float, batch_tokens: int = 20_000) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs gRPC
        self.pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=init_worker, initargs=(str(model), run, tol))
        self.batch_tokens = batch_tokens
        self.pending: list[Segment] = []
        self.pending_tokens = 0
        self.futures: list[Future[tuple[Verdict, float]]] = [self.pool.submit(worker_check, [])]  # start it now
        self.verdict = Verdict()
        self.cpu = 0.0
        self.backlog_max = 0

    def add(self, seg: Segment) -> None:
        self.pending.append(seg)
        self.pending_tokens += len(seg.tokens)
        if self.pending_tokens >= self.batch_tokens:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.futures.append(self.pool.submit(worker_check, self.pending))
            self.pending, self.pending_tokens = [], 0

    def collect(self) -> None:
        done = [f for f in self.futures if f.done()]
        self.futures = [f for f in self.futures if not f.done()]
        self.backlog_max = max(self.backlog_max, len(self.futures))
        for f in done:
            v, cpu = f.result()
            self.verdict.add(v)
            self.cpu += cpu

    def finish(self) -> Verdict:
        self.flush()
        for f in self.futures:
            f.result()
        self.collect()
        self.pool.shutdown()
        return self.verdict
