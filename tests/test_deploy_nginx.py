"""The `scale` topology without Docker: Debian's nginx (deploy/nginx/seqpred.conf) in front of two
``seqpred serve --store redis`` replicas and one real redis-server, all on loopback ports.

* unary calls of one session are spread over both replicas and give exactly the single-server predictions;
* one replica SIGKILLed mid-load: no acknowledged token is lost, the balancer sends new calls to the other
  replica, and the calls that fail are counted (only those in flight on the killed replica);
* one replica drained with SIGTERM finishes the streams it holds.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import RedisServer, free_port, redis_server
from service_helpers import oracle
from test_store_redis_replicas import Replica, feed, replicas

from service.client.sync import Client
from service.client.types import RequestError

CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "seqpred.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs Debian's nginx)")

PROMPT = ["def add(a, b", "):\n", "    ret", "urn a + b\n", "\n", "class Po"]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


class Nginx:
    """nginx with deploy/nginx/seqpred.conf, the replicas' loopback ports put in for replica1/replica2."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        self.prefix, self.port = prefix, free_port()
        conf = CONF.read_text()
        for name, port in zip(("replica1:50051", "replica2:50051"), upstreams, strict=True):
            conf = conf.replace(name, f"127.0.0.1:{port}")
        conf = conf.replace("listen 8080 http2;", f"listen 127.0.0.1:{self.port} http2;")
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "seqpred.conf").write_text(conf)
        argv = [str(NGINX), "-p", str(prefix), "-c", str(prefix / "seqpred.conf"), "-g", "daemon off;"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not self._listening():
            assert self.proc.poll() is None, f"nginx exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
            assert time.monotonic() < deadline, "nginx did not listen within 20 s"
            time.sleep(0.05)
        self.target = f"127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def upstreams_used(self) -> list[int]:
        """The replica port of every call nginx passed on, from its access log (``upstream=...``)."""
        text = (self.prefix / "logs" / "access.log").read_text()
        return [int(p) for p in re.findall(r"upstream=127\.0\.0\.1:(\d+)", text)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open connections
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def topology(redis: RedisServer, tmp_path: Path, *extra: str) -> Iterator[tuple[Nginx, list[Replica]]]:
    with replicas(redis, 2, *extra) as reps:
        lb = Nginx(tmp_path / "nginx", [r.port for r in reps])
        try:
            yield lb, reps
        finally:
            lb.stop()


def test_unary_calls_of_one_session_spread_over_both_replicas_and_equal_one_server(
    redis: RedisServer, tmp_path: Path
) -> None:
    with topology(redis, tmp_path) as (lb, (a, b)), Client(lb.target, timeout=30) as c:
        through_lb = feed(c, "spread", PROMPT, start=True)
        # the reference: the same chunks on one replica, directly
        whole = feed(a.client, "ref", PROMPT, start=True)
        used = lb.upstreams_used()
    assert through_lb == whole  # positions, top-5 ids and logprobs, token logprobs: bit for bit
    assert {a.port, b.port} <= set(used[: len(PROMPT)]), used  # both replicas served the session
    o = oracle()
    assert [i for i, _ in through_lb[-1][1]] == o.top_k(o.encode("".join(PROMPT)), 5)


def test_a_replica_killed_mid_load_loses_no_acknowledged_token(redis: RedisServer, tmp_path: Path) -> None:
    """Eight clients feed their own sessions one chunk per call through nginx; replica A is SIGKILLed halfway.
    Acknowledged tokens are never lost: each session's position is its acknowledged count, plus at most the one
    call that failed in flight (a replica may die after storing a call's state and before replying)."""
    n_clients, calls = 8, 24
    chunk = "abc"
    acked = [0] * n_clients
    failed: list[list[int]] = [[] for _ in range(n_clients)]
    kill_at = threading.Event()

    with topology(redis, tmp_path) as (lb, (a, b)):

        def client(k: int) -> None:
            with Client(lb.target, timeout=30) as c:
                for i in range(calls):
                    if i == calls // 2:
                        kill_at.set()
                    try:
                        r = c.predict(chunk, session_id=f"load{k}", start=i == 0)
                        acked[k] = r.position
                    except RequestError as e:
                        failed[k].append(i)
                        assert e.code.name in ("UNAVAILABLE", "INTERNAL", "UNKNOWN"), e
                        if i == 0:
                            return

        threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        kill_at.wait(60)
        a.kill()
        for t in threads:
            t.join(120)
        positions = [b.client.get_session(f"load{k}").position for k in range(n_clients)]

    n_failed = sum(len(f) for f in failed)
    print(f"failover: {n_failed} of {n_clients * calls} calls failed, positions {positions}, acked {acked}")
    assert n_failed <= n_clients, failed  # only the calls in flight on A when it died
    for k in range(n_clients):
        assert acked[k] > 0
        allowed = {acked[k] + len(chunk) * j for j in range(len(failed[k]) + 1)}
        assert positions[k] in allowed, (k, positions[k], acked[k], failed[k])
    # the calls after the kill all went to B: the acknowledged counts cover (nearly) every call
    assert sum(acked) >= len(chunk) * (n_clients * calls - n_failed - n_clients)


def test_a_replica_drained_with_sigterm_finishes_its_streams(redis: RedisServer, tmp_path: Path) -> None:
    """Six streams through nginx (so on both replicas) each generate 1,000 tokens; replica A gets SIGTERM while
    they run. Every generation in flight finishes in full; then A ends its streams (UNAVAILABLE, docs/service.md),
    and each session goes on through the balancer, on B, at the position it reached."""
    n, gen = 6, 1000
    with topology(redis, tmp_path, "--grace", "60") as (lb, (a, _b)), Client(lb.target, timeout=60) as c:
        streams = [c.session() for _ in range(n)]
        sessions = [st.__enter__() for st in streams]
        for s in sessions:
            assert s.feed("def ").position == 4
        counts = [0] * n

        def generate(k: int) -> None:
            counts[k] = sum(1 for _ in sessions[k].generate(gen, temperature=0.9, seed=k))

        threads = [threading.Thread(target=generate, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert all(t.is_alive() for t in threads)  # the generations are in flight
        a.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert counts == [gen] * n
        fed = []
        for s in sessions:  # the streams A held end now; B's go on
            try:
                fed.append(s.feed("x").position == 4 + gen + 1)
            except RequestError as e:
                assert e.code.name == "UNAVAILABLE", e
                fed.append(False)
        ended = fed.count(False)
        for st in streams:
            st.__exit__(None, None, None)
        assert a.proc.wait(30) == 0  # it exits by itself once its streams are done
        assert 0 < ended < n  # the streams were spread over both replicas, and A's were drained
        for s, x in zip(sessions, fed, strict=True):  # every session continues through the balancer, on B
            with c.session(s.session_id) as again:
                assert again.feed("y").position == 4 + gen + 1 + x  # where it stopped
        assert c.predict("x = 1", session_id="after", start=True).position == 5
