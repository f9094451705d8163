"""Optimisers (Adam, SGD with momentum), global-norm clipping and the learning-rate schedule.

Pure functions over dicts of arrays: the optimiser state is a dict of arrays too, so a checkpoint stores it
as-is and a resumed run continues exactly (bit for bit) where it stopped.

Adam (Kingma & Ba 2015, the efficient form of their section 2: bias correction folded into the step size,
so ε acts as ε / sqrt(1-β2^t) on the corrected moments)::

    m <- β1 m + (1-β1) g          v <- β2 v + (1-β2) g²
    θ <- θ - lr · sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + ε)

SGD with momentum μ: ``u <- μ u + g;  θ <- θ - lr u``.
Schedule: linear warmup from 0 over ``warmup`` steps, then cosine decay from ``lr`` to ``lr * min_lr_frac``
at ``total`` steps (constant after ``total``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import ConfigError
from model.train.workspace import for_this_thread

Arrays = dict[str, Any]


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in ("adam", "sgd"):
            raise ConfigError(f"optimizer: unknown optimizer {self.name!r}; choose adam or sgd")


def init_state(cfg: OptimConfig, params: Arrays) -> Arrays:
    """Zeroed optimiser state: ``m/<name>`` and ``v/<name>`` (Adam) or ``u/<name>`` (SGD), and ``t``."""
    state: Arrays = {"t": np.zeros((), dtype=np.int64)}
    slots = ("m", "v") if cfg.name == "adam" else ("u",)
    for k, v in params.items():
        for s in slots:
            state[f"{s}/{k}"] = np.zeros_like(v)
    return state


def global_norm(grads: Arrays) -> float:
    """sqrt(Σ ||g||²) over every gradient array (computed in float64)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_by_global_norm(grads: Arrays, max_norm: float) -> float:
    """Scale every gradient in place so the global norm is at most ``max_norm``; returns the norm before."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


def step(cfg: OptimConfig, params: Arrays, grads: Arrays, state: Arrays, lr: float) -> None:
    """One update of ``params`` in place from ``grads``; advances ``state`` in place."""
    t = int(state["t"]) + 1
    state["t"] = np.asarray(t, dtype=np.int64)
    if cfg.name == "adam":
        b1, b2 = cfg.beta1, cfg.beta2
        alpha = lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        ws = for_this_thread()
        for k, p in params.items():
            g, m, v = grads[k], state[f"m/{k}"], state[f"v/{k}"]
            s = ws.empty("adam", p.shape, p.dtype)  # one reused scratch: no temporaries, no page faults
            m *= b1
            np.multiply(g, 1.0 - b1, out=s)
            m += s
            v *= b2
            np.multiply(g, g, out=s)
            s *= 1.0 - b2
            v += s
            np.sqrt(v, out=s)
            s += cfg.eps
            np.divide(m, s, out=s)
            s *= alpha
            p -= s
    else:
        for k, p in params.items():
            u = state[f"u/{k}"]
            u *= cfg.momentum
            u += grads[k]
            p -= lr * u


def lr_at(step_: int, lr: float, warmup: int, total: int, min_lr_frac: float = 0.1) -> float:
    """Learning rate at ``step_`` (0-based): linear warmup, then cosine decay to ``lr * min_lr_frac``."""
    if warmup > 0 and step_ < warmup:
        return lr * (step_ + 1) / warmup
    if total <= warmup:
        return lr
    progress = min(1.0, (step_ - warmup) / max(1, total - warmup))
    return lr * (min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))
