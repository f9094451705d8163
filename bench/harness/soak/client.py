"""The soak benchmark's client: one :class:`Driver` per concurrent stream, each juggling a few sessions.

A driver keeps ``sessions_per_stream`` sessions alive on one bidirectional stream and picks one at random for
every request: a single token or a prompt (``top_k``, sometimes ``score``), ``top_k`` alone, a greedy or sampled
generation, a reset (``start`` on a live id), or, once a session reaches its random target length, its end
(``end`` on the last request or ``CloseSession``); a new session then takes its place (server-created id or a
client-chosen one with ``start``), so the number of sessions stays steady.

Every so many requests the driver disconnects, in one of four ways (``cancel``, ``channel``, ``inflight``,
``midgen``), and carries on with the same session ids; with ``--kill-every`` the server is also SIGKILLed and
restarted (``bench/harness/soak/disconnects.py``).

Online, each response is checked for what needs no model: no error, the echoed ``request_id``, the session id,
``ended``, and its position against the acknowledged count (a ``GetSession`` after a reconnect too). Everything
else becomes a check in the session's :class:`~harness.soak.check.Segment`, verified offline
(``bench/harness/soak/check.py``).

The driver is built in layers, one module each: the sessions' acknowledged histories
(``bench/harness/soak/history.py``), the requests (``bench/harness/soak/requests.py``), the disconnects and failures
(``bench/harness/soak/disconnects.py``), and here the request mix and the stream's run.
"""

from __future__ import annotations

import asyncio
import functools

from harness.soak.disconnects import DISCONNECTS, Disconnects

__all__ = ["DISCONNECTS", "Driver"]


class Driver(Disconnects):
    """One stream of the soak; ``emit`` receives every finished segment."""

    async def run(self, stop: asyncio.Event) -> None:
        self._open_channel()
        try:
            while not stop.is_set():
                await self._guarded(self._one)
            for t in self.tracks:  # end every session, so that the server is left as it was found
                if t.sid:
                    await self._guarded(functools.partial(self._close_lost if t.lost else self._finish, t))
        finally:
            for t in self.tracks:
                self._emit(t)
            await self.channel.close()

    # -- one step ----------------------------------------------------------------------------------------------

    async def _one(self) -> None:
        p, rng = self.plan, self.rng
        t = self.tracks[int(rng.integers(len(self.tracks)))]
        if p.disconnect_every and rng.random() < 1.0 / p.disconnect_every:
            await self._disconnect(t, DISCONNECTS[int(rng.integers(len(DISCONNECTS)))])
        elif not t.sid:
            await self._create(t)
        elif t.lost:
            await self._reset(t)
        elif t.pos >= t.target:
            await self._finish(t)
        else:
            u = rng.random()
            if u < 0.55:
                await self._feed(t, 1)
            elif u < 0.70:
                await self._feed(t, int(rng.integers(2, p.max_prompt + 1)))
            elif u < 0.78:
                await self._feed(t, 0)
            elif u < 0.99:
                await self._generate(t, int(rng.integers(1, 7)), greedy=u < 0.885)
            else:
                await self._reset(t)
