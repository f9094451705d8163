"""The vanilla tanh RNN, the baseline the tutorial says fails on long lags. Column vectors, batch last.

Forward and backward (ONNX RNN layout: W ``[H, X]``, R ``[H, H]``, b ``[H]``)::

    h'      = tanh(ax + R h)          ax = W x + b
    da      = dh'∘(1 - h'²)
    dh_prev = R^T da

Initialisation: W, R ~ U(±1/sqrt(H)), b = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import dtanh, tanh_


@dataclass(frozen=True)
class RNNCell:
    name: str = "rnn"
    G: int = 1
    has_c: bool = False

    def c_width(self, H: int) -> int:
        """No c: the state is h alone."""
        return 0

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"W": (H, X), "R": (H, H), "b": (H,)}

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, 1, rng, dtype)
        return {"W": W, "R": R, "b": b}

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, None, Any]:
        """One step. ax ``[H, B]``, h ``[H, B]`` -> h' ``[H, B]``, None, cache."""
        if a is None:
            a = np.empty_like(ax)
        np.matmul(p["R"], h, out=a)
        a += ax
        tanh_(a)
        return a, None, a

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, None, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh' ``[H, B]`` -> dax, dh ``[H, B]``, None, R terms, {}."""
        if dax is None:
            dax = np.empty_like(cache)
        dtanh(dh2, cache, out=dax)
        return dax, p["R"].T @ dax, None, ((slice(None), None, None),), {}


RNN = RNNCell()
