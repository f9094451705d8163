"""The session log's writer: records appended on the event loop, written and synced by one thread, group commit.

:meth:`LogWriter.append` adds an encoded record (:mod:`service.durability.wal`) to an in-memory buffer, tagged with the
current segment number; :meth:`rotate` starts the next segment. The writer thread takes the whole buffer, writes
it to its segment files and ``fdatasync``\\ s them, then tells the loop how far the log is durable:

* ``sync``: the thread starts as soon as a record is waiting. Records appended while one write + sync runs go
  into the next, so there is one sync per group of requests, not per request. :meth:`durable` gives an awaitable
  that completes when everything appended so far is synced (the engine awaits it before replying).
* periodic (``sync=False``): the thread syncs every ``fsync_interval`` seconds; :meth:`durable` never waits.

A failed write or sync (a full disk) fails the replies waiting for it with StoreUnavailable, cuts the segment back
to its last synced size and retries the same records later: a torn record is never followed by good ones, and no
record is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path

from prometheus_client import Counter, Histogram

from service.durability import wal
from service.errors import StoreUnavailable

log = logging.getLogger("seqpred.durability")


class LogWriter:
    """Appends records to numbered segments in ``directory``; see the module docstring."""

    def __init__(
        self, directory: Path, sync: bool, fsync_interval: float, log_bytes: Counter, fsync_seconds: Histogram
    ) -> None:
        self.dir = directory
        self.sync = sync
        self.fsync_interval = fsync_interval
        self.log_bytes, self.fsync_seconds = log_bytes, fsync_seconds
        self.retry_delay = 1.0  # seconds before a failed write is retried
        self.segment = 0  # the segment new records go to
        self.appended = 0  # bytes appended, ever
        self.synced = 0  # bytes written and synced, ever
        self._lock = threading.Lock()
        self._chunks: list[tuple[int, bytearray]] = []  # (segment, records) not yet taken by the thread
        self._kick = threading.Event()
        self._stopping = False
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fd, self._fd_seg, self._size = -1, -1, 0  # the thread's open segment and its synced size

    # -- event loop -------------------------------------------------------------------------------------------

    def append(self, rec: bytes) -> None:
        with self._lock:
            chunks = self._chunks
            if chunks and chunks[-1][0] == self.segment:
                chunks[-1][1].extend(rec)
            else:
                chunks.append((self.segment, bytearray(rec)))
            self.appended += len(rec)
        if self.sync and not self._kick.is_set():
            self._kick.set()

    def rotate(self) -> int:
        """Start the next segment (the thread opens it even if no record follows); returns its number."""
        with self._lock:
            self.segment += 1
            self._chunks.append((self.segment, bytearray()))
        self._kick.set()
        return self.segment

    def durable(self) -> Awaitable[None] | None:
        """None when everything appended is synced (or in periodic mode), else a future completing when it is."""
        if not self.sync:
            return None
        target = self.appended
        if target <= self.synced:
            return None
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, fut))
        return fut

    def _wake(self, synced: int, error: BaseException | None = None) -> None:
        w = self._waiters
        while w and w[0][0] <= synced:
            _, fut = w.popleft()
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(
                    StoreUnavailable(f"durability: cannot write the session log in {str(self.dir)!r}: {error}")
                )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seqpred-wal", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Write and sync what is left, then end the thread."""
        if self._thread is not None:
            with self._lock:
                self._stopping = True
            self._kick.set()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        self._wake(self.synced)

    # -- the thread -------------------------------------------------------------------------------------------

    def _notify(self, synced: int, error: BaseException | None = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, synced, error)

    def _run(self) -> None:
        while True:
            self._kick.wait(None if self.sync else self.fsync_interval)
            self._kick.clear()
            with self._lock:
                chunks, self._chunks = self._chunks, []
                target, stopping = self.appended, self._stopping
            if chunks:
                t0 = time.perf_counter()
                try:
                    self._write(chunks)
                except OSError as e:
                    log.error("session log: write failed; will retry", extra={"fields": {"error": str(e)}})
                    self._notify(target, e)
                    if stopping:
                        break
                    time.sleep(self.retry_delay)
                    self._kick.set()
                    continue
                self.fsync_seconds.observe(time.perf_counter() - t0)
                self.log_bytes.inc(sum(len(d) for _, d in chunks))
                self.synced = target
                self._notify(target)
            if stopping:
                with self._lock:
                    if not self._chunks:
                        break
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, chunks: list[tuple[int, bytearray]]) -> None:
        """Append ``chunks`` to their segments (opening new ones as numbered) and sync. On failure the open
        segment is cut back to its last synced size and its unsynced chunks are queued again."""
        unsynced = 0  # chunks[unsynced:] are not synced yet
        try:
            for i, (seg, data) in enumerate(chunks):
                if seg != self._fd_seg:
                    if self._fd >= 0:
                        os.fdatasync(self._fd)
                        os.close(self._fd)
                        self._fd = -1
                    unsynced = i
                    self._fd = os.open(wal.segment_path(self.dir, seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    self._fd_seg = seg
                    self._size = os.fstat(self._fd).st_size
                    wal.fsync_dir(self.dir)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            if self._fd >= 0:
                os.fdatasync(self._fd)
                self._size = os.fstat(self._fd).st_size
        except OSError:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            with self._lock:  # copies: the failed ones may still be exported to memoryviews
                self._chunks[:0] = [(seg, bytearray(data)) for seg, data in chunks[unsynced:]]
            raise
