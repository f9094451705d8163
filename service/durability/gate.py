"""A gate for requests that must not straddle a snapshot: the unary requests inside ``Persistence.atomic``.

Requests :meth:`Gate.hold` it while they run; a snapshot :meth:`Gate.drain`\\ s it (new requests wait at the gate
while those inside finish), takes its copy, and :meth:`Gate.reopen`\\ s it. Before :meth:`Gate.start` (on the
event loop) nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Gate:
    def __init__(self) -> None:
        self.inside = 0
        self._open: asyncio.Event | None = None  # cleared while a snapshot drains
        self._idle: asyncio.Event | None = None  # set while nobody is inside

    def start(self) -> None:
        self._open, self._idle = asyncio.Event(), asyncio.Event()
        self._open.set()
        if self.inside == 0:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._open is not None:
            await self._open.wait()
        self.inside += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            yield
        finally:
            self.inside -= 1
            if self.inside == 0 and self._idle is not None:
                self._idle.set()

    async def drain(self, timeout: float | None) -> bool:
        """Close the gate and wait until nobody is inside (True), or reopen it after ``timeout`` seconds (False)."""
        assert self._open is not None and self._idle is not None, "Gate.start() first"
        self._open.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            self._open.set()
            return False
        except BaseException:  # cancelled (shutdown): never leave requests waiting at a closed gate
            self._open.set()
            raise
        return True

    def reopen(self) -> None:
        if self._open is not None:
            self._open.set()
