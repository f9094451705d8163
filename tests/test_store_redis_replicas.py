"""Replicas sharing one real redis-server (``--store redis``): failover between two server processes (one is
SIGKILLed), compare-and-set and expiry between two servers in this process.

The "uninterrupted run" every failover is compared with is the same requests, in the same chunks, sent to one
server that is never interrupted; the comparison is exact (the same graphs on the same bytes of state).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from redis_helpers import RedisServer, free_port, redis_server
from service_helpers import oracle, settings, tiny_model

from service.client.sync import Client
from service.client.types import RequestError
from service.errors import StoreUnavailable
from service.server import ServerThread

PROMPT = ["def add(a, b", "):\n", "    ret"]
REST = ["urn a + b\n", "\n", "class Po"]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


class Replica:
    """``seqpred serve --store redis`` in a subprocess, on a port it picked itself; :meth:`wait` for it."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        argv = [
            sys.executable, "-c", "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))",
            "--model", str(tiny_model()), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
            "--store", "redis", "--redis-url", redis_url, "--log-format", "text", "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent)
        self.log: list[str] = []
        self.port = 0

    def wait(self) -> Replica:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 90
        while not self.port:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"the replica exited ({self.proc.wait()}): {''.join(self.log)[-2000:]}")
            self.log.append(line)
            m = re.search(r"serving .* on port (\d+)", line)
            if m:
                self.port = int(m.group(1))
            assert time.monotonic() < deadline, "the replica did not start within 90 s"
        # keep draining stderr so that the child never blocks on a full pipe
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr or []), daemon=True).start()
        self.client = Client(f"127.0.0.1:{self.port}", timeout=30)
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if hasattr(self, "client"):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def in_process(redis: RedisServer, n: int, **kw: Any) -> Iterator[list[Client]]:
    """``n`` replicas as servers in threads of this process (each its own store, engine and Redis client)."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(ServerThread(settings(store="redis", redis_url=redis.url, **kw))) for _ in range(n)
        ]
        yield [stack.enter_context(Client(st.target, timeout=30)) for st in servers]


@contextlib.contextmanager
def replicas(redis: RedisServer, n: int, *extra: str) -> Iterator[list[Replica]]:
    out: list[Replica] = []
    try:
        for _ in range(n):  # started side by side, then waited for
            out.append(Replica(redis.url, *extra))
        yield [r.wait() for r in out]
    finally:
        for r in out:
            r.kill()


def feed(c: Client, sid: str, chunks: list[str], start: bool = False) -> list[Any]:
    out = []
    for i, text in enumerate(chunks):
        r = c.predict(text, session_id=sid, start=start and i == 0, top_k=5, score=True)
        out.append((r.position, [(p.id, p.logprob) for p in r.predictions], r.token_logprobs))
    return out


def test_a_session_continues_on_another_replica_after_the_first_is_killed(redis: RedisServer) -> None:
    with replicas(redis, 2) as (a, b):
        before = feed(a.client, "s1", PROMPT, start=True)
        a.kill()
        after = feed(b.client, "s1", REST)
        gen = b.client.predict(session_id="s1", generate=12, temperature=0.9, seed=7)
        # the uninterrupted run: the same chunks on one replica that nobody kills
        whole = feed(b.client, "ref", PROMPT + REST, start=True)
        ref_gen = b.client.predict(session_id="ref", generate=12, temperature=0.9, seed=7)
    assert before + after == whole  # positions, top-5 ids and logprobs, token logprobs: bit for bit
    assert [p.id for p in gen.generated] == [p.id for p in ref_gen.generated]
    assert gen.position == ref_gen.position == whole[-1][0] + 12
    # and it is the model: the NumPy oracle agrees on the last top-5 and the scored tokens
    o = oracle()
    ids = o.encode("".join(PROMPT + REST))
    assert [i for i, _ in after[-1][1]] == o.top_k(ids, 5)
    np.testing.assert_allclose(
        [lp for *_, tl in before + after for lp in tl], o.token_logprobs(ids), rtol=1e-4, atol=1e-4
    )


def test_concurrent_writes_from_two_replicas_never_both_advance_one_version(redis: RedisServer) -> None:
    """Two clients hammer one session, one per replica. Each request carries a distinct token; a successful reply
    reports the position its token landed at. No two successes may land at the same position, the successes fill
    the positions after the start without gaps, and the session's final state is the model's state after exactly
    those tokens in that order (checked against the NumPy oracle). Refused requests answer ABORTED."""
    o = oracle()
    prefix = o.encode("def ")
    with in_process(redis, 2) as (a, b):
        a.predict(tokens=prefix, session_id="hot", start=True)
        landed: dict[int, int] = {}
        aborted: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def hammer(c: Client, tokens: list[int]) -> None:
            for t in tokens:
                try:
                    r = c.predict(tokens=[t], session_id="hot")
                except RequestError as e:
                    if e.code != grpc.StatusCode.ABORTED:
                        errors.append(e)
                    with lock:
                        aborted.append(t)
                    continue
                with lock:
                    assert r.position not in landed, f"two requests both advanced to position {r.position}"
                    landed[r.position] = t

        rng = np.random.default_rng(0)
        ta, tb = rng.integers(0, o.V, 30).tolist(), rng.integers(0, o.V, 30).tolist()
        threads = [threading.Thread(target=hammer, args=(c, ts)) for c, ts in ((a, ta), (b, tb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        final = b.predict(session_id="hot", top_k=5)
    assert len(landed) + len(aborted) == len(ta) + len(tb)
    assert sorted(landed) == list(range(len(prefix) + 1, len(prefix) + 1 + len(landed)))
    accepted = [landed[p] for p in sorted(landed)]
    assert final.position == len(prefix) + len(accepted)
    assert [p.id for p in final.predictions] == o.top_k(prefix + accepted, 5)


def test_the_replica_that_loses_the_race_answers_aborted_and_stores_nothing(redis: RedisServer) -> None:
    """Deterministically: while replica A's step of a session is being batched, replica B advances the same
    session; A's compare-and-set then fails, its client gets ABORTED, and the session holds B's step only. A's next
    request reloads the session and goes on from there."""
    o = oracle()
    ids = o.encode("class Po")
    with contextlib.ExitStack() as stack:
        sa, sb = (stack.enter_context(ServerThread(settings(store="redis", redis_url=redis.url))) for _ in range(2))
        a, b = stack.enter_context(Client(sa.target, timeout=30)), stack.enter_context(Client(sb.target, timeout=30))
        a.predict(tokens=ids[:4], session_id="race", start=True)
        assert b.predict(session_id="race", top_k=1).position == 4  # B has loaded it too

        def interloper(lane: str, jobs: list[Any]) -> None:
            sa.server.batcher.batch_hook = None  # once
            b.predict(tokens=[ids[4]], session_id="race")  # blocks A's loop until B has written

        sa.server.batcher.batch_hook = interloper
        with pytest.raises(RequestError) as e:
            a.predict(tokens=[ids[5]], session_id="race", top_k=3)
        assert e.value.code == grpc.StatusCode.ABORTED
        assert "changed by another request" in e.value.message
        r = a.predict(tokens=[ids[6]], session_id="race", top_k=3)  # reloaded: B's step, then this one
        assert r.position == 6
        assert [p.id for p in r.predictions] == o.top_k([*ids[:5], ids[6]], 3)
        assert [p.id for p in b.predict(session_id="race", top_k=3).predictions] == o.top_k([*ids[:5], ids[6]], 3)


def test_idle_sessions_expire_in_redis(redis: RedisServer) -> None:
    with in_process(redis, 2, idle_timeout=1.0, sweep_interval=0.2) as (a, b):
        a.predict("def ", session_id="brief", start=True)
        a.predict("def ", session_id="kept", start=True)
        for _ in range(3):  # "kept" is used, on either replica, more often than its idle timeout
            time.sleep(0.5)
            b.predict(session_id="kept", top_k=1)
        with pytest.raises(RequestError) as e:
            b.predict(session_id="brief", top_k=1)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RequestError):  # gone on the replica that created it too
            a.predict(session_id="brief", top_k=1)
        assert a.predict(session_id="kept", top_k=1).position == 4


def test_a_replica_without_redis_stops_at_start_naming_the_url() -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match=f"--redis-url: no Redis answers at {url}"):
        ServerThread(settings(store="redis", redis_url=url)).start()
