"""What the soak's client knows and counts: its plan, its counters, each session's acknowledged state, outages."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import grpc

from harness.soak.check import Segment


@dataclass(frozen=True)
class Plan:
    """What the drivers do; ``disconnect_every``: mean requests between disconnects per stream (0 = never)."""

    vocab: int
    sessions_per_stream: int = 2
    min_len: int = 20
    max_len: int = 400
    max_prompt: int = 48
    max_top_k: int = 8
    disconnect_every: float = 40.0
    verify_after_reconnect: float = 0.5


@dataclass
class Stats:
    requests: int = 0
    responses: int = 0
    tokens: int = 0
    sessions: int = 0
    ended: int = 0
    resets: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    inflight_applied: int = 0
    interrupted: int = 0  # requests cut by a server kill (expected)
    lost_tokens: int = 0  # acknowledged tokens a restarted server no longer had (allowed with a lossy store)
    lost_sessions: int = 0
    ambiguous: int = 0  # restarts after which a lossy store's state could not be told apart (session reset)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


@dataclass
class Track:
    """One session as its driver knows it."""

    sid: str = ""
    seg: Segment | None = None
    pos: int = 0  # tokens the server acknowledged
    target: int = 0  # the session ends once it reaches this length
    maybe: list[int] | None = None  # tokens of a request cancelled in flight: applied or not, not known yet
    lost: bool = False  # its server-side state is unknown: reset it (start) on its next use
    suspect: bool = False  # the server restarted since its last acknowledgement (a lossy store may have lost some)
    past: list[Segment] = field(default_factory=list)  # the session's segments since its creation
    open_tails: set[int] = field(default_factory=set)  # ids of those of them that went on beyond what we know


@dataclass
class Outage:
    """Server kills, shared by the drivers: ``gen`` counts them, ``down`` while the server restarts; ``lossy``:
    a restarted server may have lost acknowledged tokens (``--durability periodic``)."""

    gen: int = 0
    down: bool = False
    lossy: bool = False


class Failed(Exception):
    """A response that was an error (``code``: its name), or a stream that broke without us cancelling it."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def error_code(e: BaseException) -> str:
    if isinstance(e, Failed):
        return e.code
    return e.code().name if isinstance(e, grpc.aio.AioRpcError) else ""


def describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"
