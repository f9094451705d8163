"""The local durable session store on SQLite (stdlib ``sqlite3``): the variant issue 14 asked to measure against
the hand-written log (``service.durability.local.LocalLog``).

It keeps everything of :class:`LocalLog` that is not the file format (hooks, atomic starts, snapshot scheduling and
its pause of the batcher, recovery's replay) and swaps the storage:

* one database ``DIR/sessions.sqlite3``, ``journal_mode=WAL``, ``synchronous=FULL`` (every commit is synced);
* the log: table ``log(seq INTEGER PRIMARY KEY, rec BLOB)``, one row per change, ``rec`` the same record payload as
  the hand-written log's (``service.durability.wal``), ``seq`` the order the changes were appended in;
* one writer thread with its own connection takes every record appended while its previous commit ran and
  inserts them in one transaction (group commit); in ``sync`` mode a reply waits for the commit of its group,
  exactly as with the log's writer (``LogWriter``: same event, same futures);
* snapshots: table ``sessions(principal, id, position, created, state BLOB)`` (one row per live session) and
  ``meta(snap_seq)``, rewritten by the writer thread in one transaction that also deletes ``log`` rows before the
  snapshot (the same cut as the log's segment rotation: the snapshot holds every change with ``seq < snap_seq``).

Recovery reads the snapshot rows, then the log rows from ``snap_seq`` on, and replays them with the product's
``recovery`` functions. This module lives in ``bench/harness`` only because the measurement kept the hand-written
log (docs/reliability.md, "SQLite or the hand-written log").
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import numpy as np

from service.durability import recovery, replay, wal
from service.durability.local import LocalLog
from service.errors import StateDirError, StoreUnavailable
from service.runtime.onnx_runtime import Runtime
from service.store.sessions import SessionStore

log = logging.getLogger("seqpred.durability")

DB_NAME = "sessions.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, rec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    principal TEXT NOT NULL, id TEXT NOT NULL, position INTEGER NOT NULL, created REAL NOT NULL,
    state BLOB NOT NULL, PRIMARY KEY (principal, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


class SqliteWriter:
    """:class:`service.durability.logwriter.LogWriter`'s interface on SQLite: records appended on the loop,
    inserted and committed by one thread, one transaction per group; snapshots go through the same thread."""

    def __init__(self, path: Path, sync: bool, fsync_interval: float) -> None:
        self.path = path
        self.sync = sync
        self.fsync_interval = fsync_interval
        self.seq = 0  # records appended, ever (the next record's seq)
        self.committed = 0
        self.appended = 0  # bytes appended (LocalLog's snapshot scheduling reads it)
        self._lock = threading.Lock()
        self._recs: list[tuple[int, bytes]] = []
        self._snaps: list[tuple[int, list[tuple[str, str, int, float, bytes]], threading.Event]] = []
        self._kick = threading.Event()
        self._stopping = False
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.segment = 0  # LocalLog sets it after recovery; unused here

    def append(self, rec: bytes) -> None:
        payload = rec[8:]  # the log's <u32 length><u32 crc32> frame is SQLite's business here
        with self._lock:
            self._recs.append((self.seq, payload))
            self.seq += 1
            self.appended += len(payload)
        if self.sync and not self._kick.is_set():
            self._kick.set()

    def rotate(self) -> int:
        """The snapshot boundary: records with a smaller seq are in the snapshot taken now."""
        return self.seq

    def durable(self) -> Awaitable[None] | None:
        if not self.sync:
            return None
        target = self.seq
        if target <= self.committed:
            return None
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, fut))
        return fut

    def _wake(self, committed: int, error: BaseException | None = None) -> None:
        w = self._waiters
        while w and w[0][0] <= committed:
            _, fut = w.popleft()
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(StoreUnavailable(f"durability: cannot write {str(self.path)!r}: {error}"))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seqpred-sqlite", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            with self._lock:
                self._stopping = True
            self._kick.set()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        self._wake(self.committed)

    def write_snapshot(self, boundary: int, rows: list[tuple[str, str, int, float, bytes]]) -> None:
        """Called from another thread: hand the snapshot to the writer thread and wait until it is committed."""
        done = threading.Event()
        with self._lock:
            self._snaps.append((boundary, rows, done))
        self._kick.set()
        done.wait()

    def _notify(self, committed: int, error: BaseException | None = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, committed, error)

    def _run(self) -> None:
        db = connect(self.path)
        try:
            while True:
                self._kick.wait(None if self.sync else self.fsync_interval)
                self._kick.clear()
                with self._lock:
                    recs, self._recs = self._recs, []
                    snaps, self._snaps = self._snaps, []
                    target, stopping = self.seq, self._stopping
                if recs:
                    try:
                        db.execute("BEGIN")
                        db.executemany("INSERT INTO log (seq, rec) VALUES (?, ?)", recs)
                        db.execute("COMMIT")
                    except sqlite3.Error as e:
                        db.execute("ROLLBACK") if db.in_transaction else None
                        with self._lock:
                            self._recs[:0] = recs
                        self._notify(target, e)
                        time.sleep(1.0)
                        self._kick.set()
                        continue
                    self.committed = target
                    self._notify(target)
                for boundary, rows, done in snaps:
                    db.execute("BEGIN")
                    db.execute("DELETE FROM sessions")
                    db.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", rows)
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('snap_seq', ?)", (boundary,))
                    db.execute("DELETE FROM log WHERE seq < ?", (boundary,))
                    db.execute("COMMIT")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    done.set()
                if stopping:
                    with self._lock:
                        if not self._recs and not self._snaps:
                            break
        finally:
            db.close()


class SqliteLog(LocalLog):
    """:class:`LocalLog` with its storage in one SQLite database (see the module docstring)."""

    def __init__(self, directory: Path | str, mode: str = "sync", *args: Any, **kw: Any) -> None:
        super().__init__(directory, mode, *args, **kw)
        self.lite = SqliteWriter(self.dir / DB_NAME, self.sync, self.fsync_interval)
        self.writer = self.lite  # type: ignore[assignment]  # the same interface as LogWriter

    def recover(self, store: SessionStore, runtime: Runtime) -> int:
        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_dir()
        try:
            self._widths, self._dtype = recovery.state_layout(store.memory)
            self._check_meta(runtime)
            loaded = self._load()
            self._replayed = recovery.restore(store, runtime, loaded, self._widths)
        except BaseException:
            self._unlock_dir()
            raise
        self.store = store
        for principal, sid in loaded.undone:
            self.writer.append(wal.encode_undo(time.time(), principal, sid))
        self.metrics.recovery_seconds.set(time.perf_counter() - t0)
        self.metrics.recovered.set(len(loaded.sessions))
        return len(loaded.sessions)

    def _load(self) -> replay.Loaded:
        db = connect(self.dir / DB_NAME)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'snap_seq'").fetchone()
            snap_seq = int(row[0]) if row else 0
            width = sum(self._widths)
            sessions: dict[tuple[str, str], replay.Restored] = {}
            states: list[bytes] = []
            for i, (principal, sid, position, created, state) in enumerate(
                db.execute("SELECT principal, id, position, created, state FROM sessions")
            ):
                sessions[(principal, sid)] = replay.Restored(principal, sid, created, position, i)
                states.append(state)
            dtype = self._dtype.newbyteorder("<")
            rows = np.frombuffer(b"".join(states), dtype=dtype).reshape(len(states), width).astype(self._dtype)
            out = replay.Loaded(sessions, rows if states else None, snap_seq, -1)
            recs = []
            last = snap_seq - 1
            for seq, rec in db.execute("SELECT seq, rec FROM log WHERE seq >= ? ORDER BY seq", (snap_seq,)):
                recs.append(wal.decode(rec))
                last = seq
            replay.apply(out, recs)
            replay.settle(out)
        except (sqlite3.Error, ValueError) as e:
            raise StateDirError(f"--state-dir: {str(self.dir / DB_NAME)!r} is unreadable: {e}") from None
        finally:
            db.close()
        self.lite.seq = self.lite.committed = last + 1
        return out

    def _persist(self, seg: int, header: dict[str, Any], rows: np.ndarray) -> int:
        data = np.ascontiguousarray(rows, dtype=self._dtype.newbyteorder("<"))
        out = [
            (p, sid, int(pos), float(created), data[i].tobytes())
            for i, (p, sid, pos, created) in enumerate(header["sessions"])
        ]
        self.lite.write_snapshot(seg, out)
        return int(data.nbytes)
