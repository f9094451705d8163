"""Durable sessions on local disk: an append-only log of every session change plus periodic state snapshots.

:class:`LocalLog` implements :class:`~service.durability.hooks.Persistence`. The engine's hooks encode records
(:mod:`service.durability.wal`) and hand them to a :class:`~service.durability.logwriter.LogWriter`, which writes and
syncs them in a thread, per group of requests (``sync``: a reply waits for its group's sync) or every ``fsync_interval``
seconds (``periodic``: the loss is bounded by the interval).

A snapshot (every ``snapshot_interval`` seconds when something changed, and at graceful shutdown) pauses the
batcher, starts a new log segment and copies every live session's state, in one step on the loop, so that it is
exactly the state before the new segment's first record; it is then written in a thread (atomic rename) and the
older segments and snapshots are deleted. Recovery (:mod:`service.durability.recovery`) loads the newest snapshot and
replays the segments from its number on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.durability import recovery, snapshot, statedir, wal
from service.durability.gate import Gate
from service.durability.hooks import Persistence, StateFn
from service.durability.logwriter import LogWriter
from service.errors import StateDirError
from service.runtime.onnx_runtime import Runtime
from service.store.sessions import SessionStore

log = logging.getLogger("seqpred.durability")

FORMAT = 1
PENDING_STALE_S = 60.0
#: How long a snapshot waits for the unary requests in progress (new ones wait for it meanwhile) before it gives up
#: until the next interval. A request holds at most --max-generate-tokens steps, so it normally takes well under it.
ATOMIC_PATIENCE_S = 10.0
FSYNC_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)


class DurabilityMetrics:
    """The durability metrics, in a server's registry (listed in docs/service.md)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.log_bytes = Counter("seqpred_durability_log_bytes_total", "bytes written to the session log", registry=r)
        self.fsync = Histogram(
            "seqpred_durability_fsync_seconds",
            "time of one group commit (write + fdatasync of the session log)",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "seqpred_durability_snapshot_seconds", "time of one snapshot (capture + write)", registry=r
        )
        self.snapshot_bytes = Gauge("seqpred_durability_snapshot_bytes", "size of the last snapshot", registry=r)
        self.recovery_seconds = Gauge(
            "seqpred_durability_recovery_seconds", "time of the start-up recovery", registry=r
        )
        self.recovered = Gauge("seqpred_durability_recovered_sessions", "sessions restored at start-up", registry=r)


class LocalLog(Persistence):
    """An append-only session log with snapshots in ``directory``; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        mode: str = "sync",
        snapshot_interval: float = 60.0,
        fsync_interval: float = 1.0,
        metrics: DurabilityMetrics | None = None,
    ) -> None:
        if mode not in ("periodic", "sync"):
            raise ValueError(f"mode must be periodic or sync, got {mode!r}")
        self.dir = Path(directory)
        self.mode = mode
        self.sync = mode == "sync"
        self.snapshot_interval = snapshot_interval
        self.fsync_interval = fsync_interval
        self.metrics = metrics if metrics is not None else DurabilityMetrics()
        self.store: SessionStore | None = None
        #: Pauses batch execution (the server sets it to ``Batcher.quiesce``) so a snapshot sees settled states.
        self.pause: Callable[[], AbstractAsyncContextManager[None]] | None = None
        self._widths: list[int] = []
        self._dtype: np.dtype[Any] = np.dtype(np.float32)
        m = self.metrics
        self.writer = LogWriter(self.dir, self.sync, fsync_interval, m.log_bytes, m.fsync)
        self._snapped = 0  # bytes appended at the last snapshot
        self._timer: asyncio.Task[None] | None = None
        self._snap_lock: asyncio.Lock | None = None
        self._lockfile: int | None = None
        self._replayed = 0
        self._pending: dict[tuple[str, str], float] = {}  # starts whose tokens are not logged yet -> since when
        self._gate = Gate()  # unary requests inside atomic(); a snapshot drains it

    # -- hooks (event loop) -----------------------------------------------------------------------------------

    def on_create(self, principal: str, session_id: str) -> None:
        self.writer.append(wal.encode_create(time.time(), principal, session_id))

    def on_reset(self, principal: str, session_id: str) -> None:
        self.writer.append(wal.encode_reset(time.time(), principal, session_id))

    def on_start(self, principal: str, session_id: str, reset: bool, then: int) -> None:
        encode = wal.encode_reset if reset else wal.encode_create
        self.writer.append(encode(time.time(), principal, session_id, then))
        if then:
            self._pending[(principal, session_id)] = time.monotonic()
        elif self._pending:
            self._pending.pop((principal, session_id), None)

    def on_advance(
        self, principal: str, session_id: str, tokens: np.ndarray | int, position: int, state: StateFn
    ) -> None:
        self.writer.append(wal.encode_advance(time.time(), principal, session_id, tokens, position))
        if self._pending:
            self._pending.pop((principal, session_id), None)

    def on_advance_part(
        self, principal: str, session_id: str, tokens: np.ndarray | int, position: int, state: StateFn
    ) -> None:
        self.writer.append(wal.encode_advance(time.time(), principal, session_id, tokens, position, part=True))
        if self._pending:
            self._pending.pop((principal, session_id), None)

    def on_commit(self, principal: str, session_id: str) -> None:
        self.writer.append(wal.encode_commit(time.time(), principal, session_id))

    def atomic(self) -> AbstractAsyncContextManager[None]:
        """A unary request with several changes; waits while a snapshot waits for the ones in progress to end (so
        that a snapshot never holds part of one: its records before the snapshot could not be voided)."""
        return self._gate.hold()

    def on_close(self, principal: str, session_id: str, reason: str) -> None:
        self.writer.append(wal.encode_close(time.time(), principal, session_id, reason))
        if self._pending:
            self._pending.pop((principal, session_id), None)

    def durable(self) -> Awaitable[None] | None:
        return self.writer.durable()

    # -- recovery, start, snapshots, shutdown (event loop) ----------------------------------------------------

    def recover(self, store: SessionStore, runtime: Runtime) -> int:
        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_dir()
        try:
            self._widths, self._dtype = recovery.state_layout(store.memory)
            self._check_meta(runtime)
            loaded = recovery.load(self.dir, self._widths, self._dtype)
            self._replayed = recovery.restore(store, runtime, loaded, self._widths)
        except BaseException:
            self._unlock_dir()
            raise
        self.store = store
        self.writer.segment = loaded.last_number + 1  # never append to a replayed segment
        for principal, sid in loaded.undone:
            self.writer.append(wal.encode_undo(time.time(), principal, sid))
        seconds = time.perf_counter() - t0
        self.metrics.recovery_seconds.set(seconds)
        self.metrics.recovered.set(len(loaded.sessions))
        if loaded.anomalies:
            log.warning("session log: records that did not fit", extra={"fields": {"count": loaded.anomalies}})
        log.info(
            "recovered sessions",
            extra={
                "fields": {
                    "sessions": len(loaded.sessions),
                    "seconds": round(seconds, 3),
                    "snapshot": loaded.snapshot,
                    "records": loaded.records,
                    "replayed_tokens": self._replayed,
                    "truncated_bytes": loaded.truncated_bytes,
                    "undone_starts": len(loaded.undone),
                    "state_dir": str(self.dir),
                    "mode": self.mode,
                }
            },
        )
        return len(loaded.sessions)

    def _lock_dir(self) -> None:
        self._lockfile = statedir.lock(self.dir)
        if self._lockfile is None:
            raise StateDirError(f"--state-dir: {str(self.dir)!r} is in use by another server")

    def _unlock_dir(self) -> None:
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def _check_meta(self, runtime: Runtime) -> None:
        meta = {
            "format": FORMAT,
            "model_sha256": runtime.bundle.manifest_sha256,
            "state_names": list(runtime.state_names),
            "widths": self._widths,
            "dtype": self._dtype.name,
        }
        statedir.check_meta(self.dir, meta)

    def start(self) -> None:
        self._snap_lock = asyncio.Lock()
        self._gate.start()
        self.writer.start()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._snapshot_forever())

    async def _snapshot_forever(self) -> None:
        due = self._replayed > 0  # the replayed log is compacted right away, so the next start replays less
        while True:
            if due:
                try:
                    await self.snapshot()
                except Exception:  # a failed snapshot loses nothing (the log stays); try again next time
                    log.exception("snapshot failed")
            await asyncio.sleep(self.snapshot_interval)
            due = self.writer.appended > self._snapped

    async def snapshot(self, patience: float = 1.0) -> bool:
        """Copy every live session's state (batches paused) at a new segment boundary, write it, compact.

        A snapshot must not hold a start (create, reset) whose tokens are not logged yet, nor part of a unary
        request (:meth:`atomic`), or a crash could keep them without the rest: new unary requests wait while it
        waits for those in progress to end (at most :data:`ATOMIC_PATIENCE_S`), then it waits (batches running
        meanwhile) until no start is pending, for at most ``patience`` seconds; then it gives up (returns False),
        or with ``patience`` < 0 takes the snapshot."""
        store, loop = self.store, asyncio.get_running_loop()
        if store is None or self._snap_lock is None:
            return False
        async with self._snap_lock:
            t0 = time.perf_counter()
            if not await self._gate.drain(ATOMIC_PATIENCE_S if patience >= 0 else None):
                log.info("snapshot postponed: unary requests in progress did not end")
                return False
            try:  # once the snapshot's boundary is set (or it gave up), unary requests go on
                captured = await self._capture_settled(store, patience)
            finally:
                self._gate.reopen()
            if captured is None:
                return False
            seg, header, rows = captured
            header["segment"] = seg
            nbytes = await loop.run_in_executor(None, self._persist, seg, header, rows)
            seconds = time.perf_counter() - t0
            self.metrics.snapshot_seconds.observe(seconds)
            self.metrics.snapshot_bytes.set(nbytes)
            fields = {"sessions": len(rows), "bytes": nbytes, "seconds": round(seconds, 3), "segment": seg}
            log.info("snapshot", extra={"fields": fields})
            return True

    async def _capture_settled(
        self, store: SessionStore, patience: float
    ) -> tuple[int, dict[str, Any], np.ndarray] | None:
        """Rotate the log and capture every state once no start is pending (batches paused meanwhile); None when
        starts kept pending longer than ``patience`` (>= 0) seconds."""
        t0 = time.perf_counter()
        stale = time.monotonic() - PENDING_STALE_S
        for key in [k for k, since in self._pending.items() if since < stale]:
            del self._pending[key]  # never resolved (should not happen): do not block snapshots forever
        while True:
            if self._pending and 0 <= patience < time.perf_counter() - t0:
                log.info("snapshot postponed: requests keep starting sessions")
                return None
            async with self.pause() if self.pause is not None else contextlib.nullcontext():
                if not self._pending or patience < 0:
                    seg = self.writer.rotate()
                    self._snapped = self.writer.appended
                    header, rows = self._capture(store)
                    return seg, header, rows
            await asyncio.sleep(0.002)

    def _capture(self, store: SessionStore) -> tuple[dict[str, Any], np.ndarray]:
        now_m, now_w = time.monotonic(), time.time()
        sessions: list[list[Any]] = []
        slots: list[int] = []
        position = store.position
        for principal, sid, slot, created in store.live_sessions():
            sessions.append([principal, sid, position(slot), now_w - (now_m - created)])
            slots.append(slot)
        rows = recovery.read_rows(store.memory, np.array(slots, dtype=np.int64), self._widths, self._dtype)
        header = {"format": FORMAT, "dtype": self._dtype.name, "widths": self._widths, "sessions": sessions}
        return header, rows

    def _persist(self, seg: int, header: dict[str, Any], rows: np.ndarray) -> int:
        nbytes = snapshot.write_snapshot(wal.snapshot_path(self.dir, seg), header, rows)
        for pattern in (wal.SNAPSHOT_RE, wal.SEGMENT_RE):
            for n, path in wal.numbered(self.dir, pattern):
                if n < seg:
                    path.unlink(missing_ok=True)
        return nbytes

    async def close(self) -> None:
        """Graceful shutdown: a final snapshot (so the next start replays nothing), then stop the writer."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        if self.store is not None and self._snap_lock is not None:
            await self.snapshot(patience=-1)  # drained: nothing can resolve a pending start any more
        await self.writer.stop()
        self._unlock_dir()
