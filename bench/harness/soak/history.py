"""The soak client's view of each session: what the server acknowledged, and the offline checks it implies.

:class:`History` holds a driver's state (its :class:`~harness.soak.types.Track` per session, the connection, the
current request) and keeps each session's acknowledged history: every response's position is matched against
the acknowledged count (:meth:`History._resolve`, which also settles a request cancelled in flight, and, after a
kill of a server with a lossy store, finds the prefix the session fell back to), and what it carries beyond that
becomes a check in the session's :class:`~harness.soak.check.Segment`, verified offline
(``bench/harness/soak/check.py``). A session whose server-side state is no longer known is *lost*: its segment ends with
an open tail, and it is reset on its next use. The requests are in ``bench/harness/soak/requests.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from harness.soak.check import POS, SCORE, TOP, Segment
from harness.soak.types import Outage, Plan, Stats, Track
from service._proto.seqpred.v1 import seqpred_pb2 as pb


class History:
    """A stream's sessions and their acknowledged histories; ``emit`` receives every finished segment."""

    def __init__(
        self,
        index: int,
        target: str,
        plan: Plan,
        rng: np.random.Generator,
        stats: Stats,
        emit: Callable[[Segment], None],
        outage: Outage | None = None,
    ) -> None:
        self.i, self.target, self.plan, self.rng, self.stats, self.emit = index, target, plan, rng, stats, emit
        self.outage = outage or Outage()
        self.seen_gen = self.outage.gen
        #: the request being answered: (track, kind, tokens, client-chosen id); what a failure leaves unknown
        self.current: tuple[Track, str, list[int], str] | None = None
        self.tracks = [Track() for _ in range(plan.sessions_per_stream)]
        self.channel: Any = None
        self.stub: Any = None
        self.call: Any = None
        self.request_id = 0
        self.made = 0

    def _resolve(self, t: Track, consumed: int, got: int, what: str) -> bool:
        """Match the position ``got`` after ``consumed`` more tokens against what was acknowledged (and a
        request cancelled in flight, which the server applied entirely or not at all). False: unreconcilable."""
        assert t.seg is not None
        if t.maybe is not None:
            if got == t.pos + len(t.maybe) + consumed:
                t.seg.tokens += t.maybe
                t.pos += len(t.maybe)
                self.stats.tokens += len(t.maybe)
                self.stats.inflight_applied += 1
            t.maybe = None
        if got != t.pos + consumed and t.suspect and self.outage.lossy:
            t.suspect = False
            return self._fell_back(t, consumed, got, what)
        t.suspect = False
        if got != t.pos + consumed:
            t.seg.checks.append((POS, what, t.pos + consumed, got))
            self._lose(t)
            return False
        return True

    def _record(self, t: Track, toks: list[int], resp: pb.StreamResponse, req: pb.StreamRequest) -> None:
        assert t.seg is not None
        p0 = t.pos
        t.seg.tokens += toks
        t.pos += len(toks)
        self.stats.tokens += len(toks)
        if req.score:
            t.seg.checks.append((SCORE, p0, len(toks), list(resp.token_logprobs)))
        if req.top_k:
            preds = resp.predictions
            t.seg.checks.append((TOP, t.pos, [x.id for x in preds], [x.logprob for x in preds], req.top_k))

    def _fell_back(self, t: Track, consumed: int, got: int, what: str) -> bool:
        """A lossy store lost acknowledged tokens in a kill: its state is now that after ``got - consumed`` tokens
        of one of the session's segments. Go on from that prefix if only one fits; reset the session when the
        prefix is ambiguous; a mismatch when none fits."""
        assert t.seg is not None
        q = got - consumed
        if q < 0:
            prefix: list[int] | None = None
        else:
            fits = {tuple(s.tokens[:q]) for s in t.past if len(s.tokens) >= q}
            if len(fits) > 1 or any(len(s.tokens) < q for s in t.past if id(s) in t.open_tails):
                self.stats.ambiguous += 1
                self._lose(t)
                return False
            prefix = list(fits.pop()) if fits else None
        if prefix is None:
            t.seg.checks.append((POS, f"{what} after a restart", f"a prefix of {t.pos + consumed}", got))
            self._lose(t)
            return False
        self.stats.lost_tokens += max(t.pos - q, 0)
        name = t.seg.name
        self._emit(t)
        t.seg, t.pos = Segment(name + "~", prefix, carried=q), q
        t.past.append(t.seg)
        return True

    def _new_segment(self, t: Track, sid: str) -> None:
        self.made += 1
        if sid != t.sid:
            t.past, t.open_tails = [], set()
        t.sid, t.pos, t.maybe, t.lost = sid, 0, None, False
        t.seg = Segment(f"{sid}#{self.made}")
        t.past.append(t.seg)

    def _emit(self, t: Track) -> None:
        if t.seg is not None and (t.seg.tokens or t.seg.checks):
            self.emit(t.seg)
        t.seg = None

    def _lose(self, t: Track) -> None:
        """Its server-side state is no longer known (the segment's tail is open): reset it on next use."""
        if t.seg is not None:
            t.open_tails.add(id(t.seg))
        self._emit(t)
        t.lost = True
