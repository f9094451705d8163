"""Running a network over a sequence cut into chunks, the state carried across: what streaming relies on."""

from __future__ import annotations

from typing import Any

import numpy as np

from model import network as N
from model.config import ModelConfig


def run_in_chunks(
    cfg: ModelConfig, p: dict[str, np.ndarray], x: np.ndarray, state: N.State, cuts: list[int]
) -> tuple[np.ndarray, N.State]:
    """``N.forward`` over ``x`` ``[B, T, ...]`` cut at every ``cuts`` position inside (0, T), carrying the state.

    Returns the head outputs concatenated along time ``[O, T, B]`` and the final state.
    """
    T = x.shape[1]
    bounds = sorted({c for c in cuts if 0 < c < T})
    outs: list[Any] = []
    for a, b in zip([0, *bounds], [*bounds, T], strict=True):
        f = N.forward(cfg, p, x[:, a:b], state)
        outs.append(f.out)
        state = f.state
    return np.concatenate(outs, axis=1), state
