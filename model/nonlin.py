"""Elementwise nonlinearities, in place where the caller owns the buffer (the hot loop allocates nothing).

``sigmoid_`` uses 1 / (1 + exp(-x)): four passes, but ``exp`` is SIMD-vectorised in NumPy for float32 and
float64 and is much faster than the ``0.5 * tanh(0.5 x) + 0.5`` form here. ``exp`` overflows to +inf for
x < -88 (float32), and 1 / inf = 0 is the correct limit, so the overflow warning is silenced.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating]


def sigmoid_(x: Array) -> Array:
    """σ(x) = 1 / (1 + e^{-x}), computed in place in ``x``; returns ``x``."""
    np.negative(x, out=x)
    with np.errstate(over="ignore"):
        np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def sigmoid(x: Array) -> Array:
    """σ(x) in a new array."""
    return sigmoid_(np.array(x, copy=True))


def tanh_(x: Array) -> Array:
    """tanh(x) in place; returns ``x``."""
    return np.tanh(x, out=x)


def dsigmoid(dy: Array, y: Array, out: Array) -> Array:
    """out = dy * y * (1 - y): backprop through y = σ(a), given the output y."""
    np.subtract(1.0, y, out=out)
    out *= y
    out *= dy
    return out


def dsigmoid_(d: Array, y: Array) -> Array:
    """d *= y * (1 - y) in place (backprop through y = σ(a) when d already holds dL/dy); returns ``d``."""
    t = np.subtract(1.0, y)
    t *= y
    d *= t
    return d


def dtanh_(d: Array, y: Array) -> Array:
    """d *= 1 - y² in place (backprop through y = tanh(a) when d already holds dL/dy); returns ``d``."""
    t = np.multiply(y, y)
    np.subtract(1.0, t, out=t)
    d *= t
    return d


def dtanh(dy: Array, y: Array, out: Array) -> Array:
    """out = dy * (1 - y^2): backprop through y = tanh(a), given the output y."""
    np.multiply(y, y, out=out)
    np.subtract(1.0, out, out=out)
    out *= dy
    return out
