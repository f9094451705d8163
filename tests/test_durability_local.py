"""Durable sessions in process: graceful shutdown, crash images (a copy of the state directory taken while the
server runs is what ``kill -9`` leaves behind), ``periodic`` mode, torn tails, replay semantics, refusals.

The ``kill -9`` test of the real server process is in test_durability_kill.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import oracle, running_server, tiny_model
from service_helpers import settings as server_settings

from service.client.sync import Client
from service.client.types import RequestError, make_request
from service.durability import logwriter, recovery, wal
from service.durability.hooks import Persistence
from service.durability.local import LocalLog
from service.engine.core import Engine
from service.engine.requests import GenerateSpec, Request
from service.errors import SessionNotFound, SettingsError, StateDirError, StoreUnavailable
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.server import SeqpredServer
from service.settings import from_args
from service.store.memory import MemoryStore

ATOL = 1e-4


def next_lp(c: Client, sid: str, V: int) -> np.ndarray:
    got = c.predict(session_id=sid, top_k=V)
    lp = np.full(V, np.nan)
    lp[[p.id for p in got.predictions]] = [p.logprob for p in got.predictions]
    return lp


def crash_image(src: Path, dst: Path) -> Path:
    """What a SIGKILL leaves on disk: the files as they are now (the page cache survives a process crash)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock"))
    return dst


def assert_session(c: Client, sid: str, ids: list[int]) -> None:
    o = oracle()
    assert c.get_session(sid).position == len(ids)
    if ids:
        np.testing.assert_allclose(next_lp(c, sid, o.V), o.next_logprobs(ids), atol=ATOL)


def assert_gone(c: Client, sid: str) -> None:
    with pytest.raises(RequestError) as e:
        c.get_session(sid)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def drive(c: Client) -> dict[str, list[int] | None]:
    """A mix of sessions: fed in chunks and single tokens, reset, ended, closed. Returns id -> expected tokens
    (None = must not come back)."""
    ids = oracle().encode("def add(a, b):\n    return a + b\n\nclass Point:\n")
    want: dict[str, list[int] | None] = {}
    with c.session("fed") as s:
        s.feed(tokens=ids[:9], start=True)
        for t in ids[9:20]:
            s.feed(tokens=[t])
    want["fed"] = ids[:20]
    with c.session("reset") as s:
        s.feed(tokens=ids[:12], start=True)
        s.feed(tokens=ids[20:23], start=True)
        s.feed(tokens=ids[23:24])
    want["reset"] = ids[20:24]
    with c.session("ended") as s:
        s.feed(tokens=ids[:5], start=True)
        s.feed(tokens=ids[5:6], end=True)
    want["ended"] = None
    with c.session("closed") as s:
        s.feed(tokens=ids[:5], start=True)
    c.close_session("closed")
    want["closed"] = None
    with c.session("empty") as s:
        s.request(make_request("empty", start=True))
    want["empty"] = []
    return want


def check(c: Client, want: dict[str, list[int] | None]) -> None:
    for sid, ids in want.items():
        if ids is None:
            assert_gone(c, sid)
        else:
            assert_session(c, sid, ids)


def test_graceful_shutdown_snapshots_everything_and_replays_nothing(tmp_path: Path) -> None:
    d = tmp_path / "state"
    with running_server(durability="sync", state_dir=str(d)) as st, Client(st.target) as c:
        want = drive(c)
    (snap,) = wal.numbered(d, wal.SNAPSHOT_RE)
    assert [n for n, _ in wal.numbered(d, wal.SEGMENT_RE)] == [snap[0]]  # older segments compacted away
    with running_server(durability="sync", state_dir=str(d)) as st, Client(st.target) as c:
        p = st.server.persistence
        assert p._replayed == 0 and p.metrics.recovered._value.get() == 3
        check(c, want)


@pytest.mark.parametrize("mode", ["sync", "periodic"])
def test_a_crash_image_holds_every_acknowledged_change(tmp_path: Path, mode: str) -> None:
    """A snapshot mid-way (the log after it is replayed through the sequence path); in periodic mode the image
    is taken after one fsync interval."""
    d = tmp_path / "state"
    kw = {"durability": mode, "state_dir": str(d), "snapshot_interval": 60, "fsync_interval": 0.05}
    with running_server(**kw) as st, Client(st.target) as c:
        ids = oracle().encode("for i in range(10):\n    print(i * 2, 'hello')\n")
        with c.session("early") as s:
            s.feed(tokens=ids[:30], start=True)
        st.call(st.server.persistence.snapshot)
        want = drive(c)
        with c.session("early") as s:
            s.feed(tokens=ids[30:40])
        want["early"] = ids[:40]
        if mode == "periodic":
            time.sleep(0.3)
        image = crash_image(d, tmp_path / "image")
    with running_server(durability=mode, state_dir=str(image)) as st, Client(st.target) as c:
        assert st.server.persistence._replayed > 0
        check(c, want)


def test_periodic_mode_loses_at_most_its_interval(tmp_path: Path) -> None:
    d = tmp_path / "state"
    kw = {"durability": "periodic", "state_dir": str(d), "fsync_interval": 60, "snapshot_interval": 60}
    with running_server(**kw) as st, Client(st.target) as c:
        drive(c)
        image = crash_image(d, tmp_path / "image")  # nothing synced yet: within the interval
    with running_server(durability="periodic", state_dir=str(image)) as st, Client(st.target) as c:
        assert_gone(c, "fed")


def test_a_torn_tail_is_truncated_with_a_log_line(tmp_path: Path, caplog: Any) -> None:
    d = tmp_path / "state"
    with running_server(durability="sync", state_dir=str(d), snapshot_interval=60) as st, Client(st.target) as c:
        want = drive(c)
        image = crash_image(d, tmp_path / "image")
    (_, last) = wal.numbered(image, wal.SEGMENT_RE)[-1]
    good = last.stat().st_size
    torn = wal.encode_create(0.0, "", "torn")[:-3]
    with open(last, "ab") as f:
        f.write(torn)
    with (
        caplog.at_level(logging.WARNING, logger="seqpred.durability"),
        running_server(durability="sync", state_dir=str(image)) as st,
        Client(st.target) as c,
    ):
        check(c, want)
        assert_gone(c, "torn")
    (line,) = [r for r in caplog.records if r.getMessage() == "session log: truncated a torn tail"]
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["file"], fields["offset"], fields["bytes"]) == (str(last), good, len(torn))
    assert fields["why"] == f"a torn record ({len(torn) - 8} of {len(torn) + 3 - 8} bytes)"


def test_an_evicted_session_does_not_come_back(tmp_path: Path) -> None:
    d = tmp_path / "state"
    kw = {"durability": "sync", "state_dir": str(d), "idle_timeout": 0.2, "sweep_interval": 0.05}
    with running_server(**kw) as st, Client(st.target) as c, c.session("idle") as s:
        s.feed(tokens=[1, 2, 3], start=True)
        deadline = time.monotonic() + 10
        while len(st.server.store) and time.monotonic() < deadline:
            time.sleep(0.05)
        image = crash_image(d, tmp_path / "image")
    with running_server(durability="sync", state_dir=str(image)) as st, Client(st.target) as c:
        assert_gone(c, "idle")


def test_durability_metrics(tmp_path: Path) -> None:
    with running_server(durability="sync", state_dir=str(tmp_path), metrics_port=0) as st, Client(st.target) as c:
        drive(c)
        body = urllib.request.urlopen(f"http://localhost:{st.server.metrics_port}/metrics", timeout=5).read().decode()
    values = {
        line.split()[0]: float(line.split()[1]) for line in body.splitlines() if line.startswith("seqpred_durability")
    }
    assert values["seqpred_durability_log_bytes_total"] > 0
    assert values["seqpred_durability_fsync_seconds_count"] > 0
    assert values["seqpred_durability_recovered_sessions"] == 0
    assert "seqpred_durability_recovery_seconds" in values


# -- replay semantics, without a server ----------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, str, list[int]]]:
    ops = st.tuples(
        st.sampled_from(["create", "reset", "advance", "close", "start", "torn", "unary", "cut"]),
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.integers(0, 30), min_size=1, max_size=5),
    )
    return draw(st.lists(ops, max_size=40))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories(), st.integers(0, 3))
def test_replay_matches_a_plain_model(
    tmp_path_factory: Any, history: list[tuple[str, str, list[int]]], cuts: int
) -> None:
    """Any history of creates, resets, advances and closes, split over segments, replays to what a dict says.

    ``start`` is a request that creates or resets a session and feeds it tokens (two records, one change);
    ``torn`` is such a request cut by a crash after its first record: void, and the recovery that found it logged
    an UNDO, except when it is the very last record (the crash being recovered from now). ``unary`` is a Predict
    that generates (on a live session, or starting one): PART records and a COMMIT, one change; ``cut`` is one cut
    by a crash before its COMMIT: void like ``torn``."""
    d = tmp_path_factory.mktemp("replay")
    model: dict[str, list[int]] = {}
    recs: list[bytes] = []
    for i, (kind, sid, toks) in enumerate(history):
        start = wal.encode_reset if sid in model else wal.encode_create
        if kind == "create" or (kind == "reset" and sid in model):
            model[sid] = []
            recs.append(start(5.0, "p", sid))
        elif kind == "advance" and sid in model:
            model[sid] = model[sid] + toks
            recs.append(wal.encode_advance(5.0, "p", sid, np.array(toks), len(model[sid])))
        elif kind == "close" and sid in model:
            del model[sid]
            recs.append(wal.encode_close(5.0, "p", sid, "close"))
        elif kind == "start":
            model[sid] = list(toks)
            recs += [start(5.0, "p", sid, len(toks)), wal.encode_advance(5.0, "p", sid, np.array(toks), len(toks))]
        elif kind == "torn":
            recs.append(start(5.0, "p", sid, len(toks)))
            if i < len(history) - 1:
                recs.append(wal.encode_undo(6.0, "p", sid))
        elif kind in ("unary", "cut"):
            base = model.get(sid)
            if base is None:
                recs.append(wal.encode_create(5.0, "p", sid, 1))
                base = []
            done = toks if kind == "unary" else toks[: max(1, len(toks) - 1)]
            for k in range(len(done)):
                recs.append(wal.encode_advance(5.0, "p", sid, done[k], len(base) + k + 1, part=True))
            if kind == "unary":
                model[sid] = base + toks
                recs.append(wal.encode_commit(5.0, "p", sid))
            elif i < len(history) - 1:
                recs.append(wal.encode_undo(6.0, "p", sid))
    bounds = sorted({0, len(recs), *np.random.default_rng(cuts).integers(0, len(recs) + 1, cuts).tolist()})
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        wal.segment_path(d, i).write_bytes(b"".join(recs[a:b]))
    loaded = recovery.load(d, [4], np.dtype(np.float32))
    assert loaded.anomalies == 0 and loaded.records == len(recs)
    got = {sid: np.concatenate(r.tokens).tolist() if r.tokens else [] for (p, sid), r in loaded.sessions.items()}
    assert got == model and all(p == "p" for p, _ in loaded.sessions)
    torn_last = bool(history) and history[-1][0] in ("torn", "cut")
    assert loaded.undone == ([("p", history[-1][1])] if torn_last else [])


def test_a_start_without_its_tokens_is_undone_for_good(tmp_path: Path, runtime: Runtime) -> None:
    """A crash between a reset and the tokens of its request: the reset is void, also after a second crash when the
    session went on meanwhile (the first recovery logs an UNDO)."""
    d = tmp_path / "state"
    d.mkdir()
    wal.segment_path(d, 0).write_bytes(
        wal.encode_create(1.0, "", "s", 3)
        + wal.encode_advance(1.0, "", "s", np.array([1, 2, 3]), 3)
        + wal.encode_reset(2.0, "", "s", 2)  # its tokens never made it
    )

    def recover() -> MemoryStore:
        store = MemoryStore(runtime.new_state_memory(4))
        log = LocalLog(d, "sync")
        log.recover(store, runtime)
        log.on_advance("", "s", 4, store.info("s", 0.0).position + 1, lambda: [])  # the session goes on

        async def flush_and_crash() -> None:
            log.writer.start()
            await log.writer.stop()

        asyncio.run(flush_and_crash())
        log._unlock_dir()
        return store

    assert recover().info("s", 0.0).position == 3  # the reset is undone
    assert recover().info("s", 0.0).position == 4  # after a second crash: still undone, and the token after it
    records = [r for _, p in wal.numbered(d, wal.SEGMENT_RE) for r in wal.scan(p.read_bytes()).records]
    assert [r.kind for r in records].count(wal.UNDO) == 1


def test_a_corrupt_segment_before_the_last_is_refused(tmp_path: Path) -> None:
    bad = bytearray(wal.encode_create(0.0, "", "a") + wal.encode_create(0.0, "", "b"))
    bad[-1] ^= 1
    wal.segment_path(tmp_path, 0).write_bytes(bytes(bad))
    wal.segment_path(tmp_path, 1).write_bytes(wal.encode_create(0.0, "", "c"))
    with pytest.raises(StateDirError, match=r"log-000000000000\.seg' is damaged at byte \d+ \(a checksum mismatch"):
        recovery.load(tmp_path, [4], np.dtype(np.float32))


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_bundle(tiny_model()), "cpu")


def test_principals_persist_and_the_directory_is_guarded(tmp_path: Path, runtime: Runtime) -> None:
    """(principal, id) is the key, through the log (a crash image) and through a snapshot (graceful close)."""
    d = tmp_path / "state"

    async def session_log() -> None:
        log = LocalLog(d, "sync")
        store = MemoryStore(runtime.new_state_memory(8))
        log.recover(store, runtime)
        log.start()
        for who in ("alice", "bob"):
            store.create("x", 0.0, who)
            log.on_create(who, "x")
        slot = store.lookup("x", 0.0, "alice")
        store.advance(slot, 3)
        log.on_advance("alice", "x", np.array([3, 4, 5]), 3, lambda: store.memory.read(slot))
        w = log.durable()
        assert w is not None
        await w
        crash_image(d, tmp_path / "image")
        with pytest.raises(StateDirError, match="is in use by another server"):
            LocalLog(d, "sync").recover(MemoryStore(runtime.new_state_memory(8)), runtime)
        await log.close()

    asyncio.run(session_log())
    for where in (tmp_path / "image", d):
        store = MemoryStore(runtime.new_state_memory(8))
        log = LocalLog(where, "sync")
        assert log.recover(store, runtime) == 2
        asyncio.run(log.close())  # unlocks the directory (nothing started, so no snapshot)
        assert store.info("x", 0.0, "alice").position == 3 and store.info("x", 0.0, "bob").position == 0
        assert store.count("") == 0
    meta = d / "meta.json"
    meta.write_text(meta.read_text().replace(runtime.bundle.manifest_sha256, "0" * 64))
    with pytest.raises(StateDirError, match="holds sessions of another model"):
        LocalLog(d, "sync").recover(MemoryStore(runtime.new_state_memory(8)), runtime)


def test_a_failed_write_fails_the_waiting_replies_and_is_retried_once(
    tmp_path: Path, runtime: Runtime, monkeypatch: Any
) -> None:
    real = logwriter.os.fdatasync
    failures = [OSError(28, "No space left on device")]

    def flaky(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(logwriter.os, "fdatasync", flaky)

    async def session_log() -> None:
        log = LocalLog(tmp_path, "sync")
        log.writer.retry_delay = 0.01
        log.recover(MemoryStore(runtime.new_state_memory(8)), runtime)
        log.start()
        log.on_create("", "x")
        w = log.durable()
        assert w is not None
        with pytest.raises(StoreUnavailable, match=r"cannot write the session log in .*No space left on device"):
            await w
        log.on_create("", "y")
        w = log.durable()
        assert w is not None
        await w
        scans = [wal.scan(p.read_bytes()) for _, p in wal.numbered(tmp_path, wal.SEGMENT_RE)]
        assert [r.session_id for sc in scans for r in sc.records] == ["x", "y"]  # each once, in order
        assert all(sc.problem == "" for sc in scans)
        await log.close()

    asyncio.run(session_log())


def test_settings() -> None:
    s = from_args(["--durability", "sync", "--state-dir", "/tmp/x"], env={})
    assert (s.durability, s.state_dir) == ("sync", "/tmp/x")
    assert from_args([], env={"SEQPRED_DURABILITY": "periodic", "SEQPRED_STATE_DIR": "d"}).durability == "periodic"
    with pytest.raises(SettingsError, match=r"--state-dir \(SEQPRED_STATE_DIR\): must be set when --durability"):
        from_args(["--durability", "sync"], env={})
    with pytest.raises(SettingsError, match="--durability"):
        from_args(["--durability", "always", "--state-dir", "d"], env={})


def test_a_snapshot_waits_for_the_tokens_of_a_start(tmp_path: Path, runtime: Runtime) -> None:
    """A snapshot taken between a reset and its request's tokens would keep the reset alone after a crash."""

    async def session_log() -> None:
        log = LocalLog(tmp_path, "sync")
        store = MemoryStore(runtime.new_state_memory(4))
        log.recover(store, runtime)
        log.start()
        store.create("s", 0.0)
        log.on_start("", "s", False, 2)
        assert await log.snapshot(patience=0.05) is False
        assert wal.numbered(tmp_path, wal.SNAPSHOT_RE) == []
        log.on_advance("", "s", np.array([1, 2]), 2, lambda: [])
        assert await log.snapshot(patience=0.05) is True
        await log.close()

    asyncio.run(session_log())
    assert len(wal.numbered(tmp_path, wal.SNAPSHOT_RE)) == 1


def test_a_snapshot_waits_for_the_unary_requests_in_progress(
    tmp_path: Path, runtime: Runtime, monkeypatch: Any
) -> None:
    """A snapshot holding part of a unary request could not void it after a crash: it waits for the requests in
    progress to end while new ones wait for it; past its patience it gives up and lets them go."""
    from service.durability import local

    async def session_log() -> None:
        log = LocalLog(tmp_path, "sync")
        store = MemoryStore(runtime.new_state_memory(4))
        log.recover(store, runtime)
        log.start()
        store.create("s", 0.0)
        log.on_start("", "s", False, 0)
        inside, release = asyncio.Event(), asyncio.Event()

        async def request(name: str, hold: bool) -> None:
            async with log.atomic():
                log.on_advance_part("", "s", 1, 1, lambda: [])
                order.append(name)
                inside.set()
                if hold:
                    await release.wait()
                log.on_commit("", "s")

        order: list[str] = []
        first = asyncio.create_task(request("first", True))
        await inside.wait()
        snap = asyncio.create_task(log.snapshot())
        await asyncio.sleep(0.05)
        second = asyncio.create_task(request("second", False))
        await asyncio.sleep(0.05)
        assert not snap.done() and order == ["first"]  # the snapshot waits, and so does the new request
        release.set()
        assert await snap is True
        await asyncio.gather(first, second)
        assert order == ["first", "second"]
        monkeypatch.setattr(local, "ATOMIC_PATIENCE_S", 0.05)
        release.clear()
        stuck = asyncio.create_task(request("stuck", True))
        await asyncio.sleep(0.01)
        assert await log.snapshot() is False  # postponed
        await request("after", False)  # not held up any longer
        release.set()
        await stuck
        await log.close()

    asyncio.run(session_log())


@pytest.mark.parametrize("cell", ["fgr", "clockwork"])
def test_states_of_other_widths_survive_a_crash(tmp_path: Path, cell: str) -> None:
    """fgr's c is [c; i; o; f] (4H wide), clockwork's its step counter (1 wide): snapshot and replay keep both."""
    o = oracle(cell, 2)
    ids = o.encode("class Point:\n    def __init__(self, x, y):")
    d = tmp_path / "state"
    kw = {"model": tiny_model(cell, 2), "durability": "sync", "state_dir": str(d), "snapshot_interval": 60}
    with running_server(**kw) as st, Client(st.target) as c, c.session("w") as s:
        s.feed(tokens=ids[:7], start=True)
        st.call(st.server.persistence.snapshot)
        s.feed(tokens=ids[7:12])
        for t in ids[12:]:
            s.feed(tokens=[t])
        image = crash_image(d, tmp_path / "image")
    with running_server(**{**kw, "state_dir": str(image)}) as st, Client(st.target) as c:
        assert c.get_session("w").position == len(ids)
        np.testing.assert_allclose(next_lp(c, "w", o.V), o.next_logprobs(ids), atol=ATOL)


class Recording(Persistence):
    """Every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_create(self, principal: str, session_id: str) -> None:
        self.calls.append(("create", session_id))

    def on_reset(self, principal: str, session_id: str) -> None:
        self.calls.append(("reset", session_id))

    def on_start(self, principal: str, session_id: str, reset: bool, then: int) -> None:
        self.calls.append(("start", session_id, reset, then))

    def on_advance(self, principal: str, session_id: str, tokens: Any, position: int, state: Any) -> None:
        t = [tokens] if isinstance(tokens, int) else list(tokens)
        self.calls.append(("advance", session_id, t, position, len(state())))

    def on_advance_part(self, principal: str, session_id: str, tokens: Any, position: int, state: Any) -> None:
        t = [tokens] if isinstance(tokens, int) else list(tokens)
        self.calls.append(("part", session_id, t, position))

    def on_commit(self, principal: str, session_id: str) -> None:
        self.calls.append(("commit", session_id))

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        self.calls.append(("atomic",))
        yield
        self.calls.append(("/atomic",))

    def on_close(self, principal: str, session_id: str, reason: str) -> None:
        self.calls.append(("close", session_id, reason))

    def durable(self) -> None:
        self.calls.append(("durable",))

    def recover(self, store: Any, runtime: Any) -> int:
        return 0


def test_the_engine_reports_every_change_in_order() -> None:
    rec = Recording()

    async def main() -> None:
        srv = SeqpredServer(server_settings())
        e = Engine(srv.settings, srv.runtime, srv.store, srv.batcher, None, rec)
        try:
            await e.request(Request("s", tokens=[1, 2, 3], start=True))
            await e.request(Request("s", tokens=[4]))
            await e.request(Request("s", top_k=2))  # reads only
            await e.request(Request("s", tokens=[5, 6], start=True))
            await e.request(Request("s", start=True))
            await e.request(Request("s", tokens=[7], end=True))
            await e.request(Request("t", start=True))
            await e.aclose("t")
        finally:
            srv.batcher.close()

    asyncio.run(main())
    K = 4  # 2 layers x (h, c)
    assert [c for c in rec.calls if c[0] != "durable"] == [
        ("start", "s", False, 3),
        ("advance", "s", [1, 2, 3], 3, K),
        ("advance", "s", [4], 4, K),
        ("start", "s", True, 2),
        ("advance", "s", [5, 6], 2, K),
        ("start", "s", True, 0),
        ("advance", "s", [7], 1, K),
        ("close", "s", "end"),
        ("start", "t", False, 0),
        ("close", "t", "close"),
    ]
    assert rec.calls.count(("durable",)) == 8  # once before every reply


async def _gen(e: Engine, r: Request, unary: bool) -> list[int]:
    return [t for rep in [x async for x in e.generate(r, unary=unary)] for t, _ in rep.generated]


def test_a_unary_generation_is_one_change_and_a_streamed_one_a_change_per_token() -> None:
    """Predict (unary): inside atomic(), PART for its prompt and each generated token, one COMMIT, one wait for
    durability before its one reply. Stream: an advance and a wait per generated token (each is a reply)."""
    rec = Recording()
    spec = GenerateSpec(max_tokens=3, temperature=0.0)

    async def main() -> list[int]:
        srv = SeqpredServer(server_settings())
        e = Engine(srv.settings, srv.runtime, srv.store, srv.batcher, None, rec)
        try:
            got = await _gen(e, Request("u", tokens=[1, 2], start=True, generate=spec), unary=True)
            rec.calls.append(("--",))
            await _gen(e, Request("u", generate=spec), unary=False)
            return got
        finally:
            srv.batcher.close()

    g = asyncio.run(main())
    cut = rec.calls.index(("--",))
    assert rec.calls[:cut] == [
        ("atomic",),
        ("start", "u", False, 2),
        ("part", "u", [1, 2], 2),
        *[("part", "u", [t], 3 + i) for i, t in enumerate(g)],
        ("commit", "u"),
        ("durable",),
        ("/atomic",),
    ]
    assert [c[0] for c in rec.calls[cut + 1 :]] == ["advance", "durable"] * 3


def test_a_unary_generation_cut_half_way_is_still_committed() -> None:
    """A Predict whose generation fails half-way (its session closed by another request meanwhile) keeps in memory
    what ran, so the log commits that too."""
    rec = Recording()

    async def main() -> None:
        srv = SeqpredServer(server_settings())
        e = Engine(srv.settings, srv.runtime, srv.store, srv.batcher, None, rec)
        try:
            await e.request(Request("c", tokens=[1], start=True))
            r = Request("c", generate=GenerateSpec(max_tokens=50, temperature=0.0))
            agen = e.generate(r, unary=True)
            await agen.__anext__()
            await agen.__anext__()
            e.close("c")  # another request closes it
            with pytest.raises(SessionNotFound):
                async for _ in agen:
                    pass
        finally:
            srv.batcher.close()

    asyncio.run(main())
    kinds = [c[0] for c in rec.calls if c[0] in ("part", "commit", "advance")]
    assert kinds[-1] == "commit" and kinds.count("commit") == 1 and kinds.count("part") >= 2
