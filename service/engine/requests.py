"""The engine's request and reply types, free of any transport (the servicer converts protobuf to and from them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GenerateSpec:
    """Sampling parameters; ``temperature`` 0 is greedy, ``top_k`` 0 = all, ``seed`` None = random."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(slots=True)
class Request:
    """One request to a session (see ``StreamRequest`` in the proto)."""

    session_id: str = ""
    tokens: Sequence[int] = ()
    text: str = ""
    start: bool = False
    end: bool = False
    top_k: int = 0
    score: bool = False
    generate: GenerateSpec | None = None
    request_id: int = 0
    principal: str = ""  # who asks (authenticated by the transport; "" = anonymous): sessions are scoped by it


@dataclass(slots=True)
class Reply:
    """One reply (see ``StreamResponse``); arrays are NumPy, ids index the vocabulary."""

    session_id: str
    position: int
    request_id: int = 0
    final: bool = True
    top_ids: list[int] | None = None
    top_logprobs: list[float] | None = None
    token_logprobs: np.ndarray | None = None
    generated: list[tuple[int, float]] = field(default_factory=list)
    ended: bool = False


@dataclass(frozen=True)
class ScoreResult:
    num_tokens: int
    token_logprobs: np.ndarray
    total_logprob: float
    top_ids: list[int] | None
    top_logprobs: list[float] | None


@dataclass(frozen=True)
class SessionView:
    """A session as reported to clients: wall-clock times (``time.time()``), seconds left before eviction."""

    session_id: str
    position: int
    created: float
    last_active: float
    time_left: float | None
