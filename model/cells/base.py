"""What every recurrent cell provides, and the conventions they share.

Layout (column vectors, batch last): a step works on ``(features, B)`` arrays, so the per-step recurrent
product is ``R @ h`` with ``R`` in the ONNX operator layout ``[G*H, H]`` (G gate blocks stacked in ONNX order).
The input term ``ax = W @ x + b`` (``[G*H, B]``) is computed for all time steps at once by the layer driver
(:mod:`model.layer`), so a cell never sees ``W`` or ``b``; it owns only its recurrent parameters
(``R`` and, for some cells, peephole weights ``P`` or the recurrent candidate bias ``Rb``).

The state of a layer is ``h`` ``[H, B]`` and, when ``c_width(H) > 0``, a second tensor ``c``
``[c_width(H), B]``: the memory cell for the LSTM family (width H), a wider or different carried state for
others (``fgr``: ``[c; i; o; f]``, 4H; ``clockwork``: the step counter, width 1).

Backward returns, besides ``dax``, ``dh`` and ``dc``, the recurrent-weight terms of this step: a tuple of
``(rows, dpre, operand)`` meaning ``dR[rows] += dpre @ operand.T``, where ``dpre=None`` stands for
``dax[rows]`` and ``operand=None`` for ``h_prev``. ``rows`` is a row slice, or a 2-D index
``(row_slice, col_slice)`` for a block of R (then ``dpre=None`` is ``dax[row_slice]`` and ``operand=None``
is ``h_prev[col_slice]``; the clockwork RNN's block-triangular R uses it). The driver stacks the terms of
all steps and does one GEMM per term at the end (one large GEMM is much faster than T small ones).
Vector-parameter gradients (``P``, ``Rb``) come back per step as full-shaped arrays in ``vec``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Params = dict[str, Array]
Index = slice | tuple[slice, slice]
RecTerm = tuple[Index, Array | None, Array | None]


def split_index(index: Index) -> tuple[slice, slice]:
    """``(row_slice, col_slice)`` of a :data:`RecTerm` index (a bare row slice covers every column)."""
    return index if isinstance(index, tuple) else (index, slice(None))


class Cell(Protocol):
    """A recurrent cell: pure step functions with explicit caches, no state of its own."""

    @property
    def name(self) -> str:
        """The ``--cell`` name."""
        ...

    @property
    def G(self) -> int:
        """Number of gate blocks G stacked in W, R and b."""
        ...

    @property
    def has_c(self) -> bool:
        """True when the state is (h, c); False when it is h alone."""
        ...

    def c_width(self, H: int) -> int:
        """Rows of the second state tensor ``c`` for hidden size H (0 when the state is h alone)."""
        ...

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        """Shapes of every parameter of one layer with input width X and hidden size H (W, R, b, ...)."""
        ...

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        """Fresh parameters: documented in each cell module."""
        ...

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, Array | None, Any]:
        """One step: ``(h', c', cache)``. ``a`` is an optional ``[G*H, B]`` buffer for the gate activations."""
        ...

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array | None, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: ``(dax, dh, dc, rec_terms, vec_grads)`` from ``dh'`` and ``dc'``."""
        ...


def uniform_init(X: int, H: int, G: int, rng: np.random.Generator, dtype: Any) -> tuple[Array, Array, Array]:
    """W ~ U(-s, s) ``[G*H, X]``, R ~ U(-s, s) ``[G*H, H]`` with s = 1/sqrt(H) (as PyTorch), b = 0 ``[G*H]``."""
    s = 1.0 / np.sqrt(H)
    W = rng.uniform(-s, s, size=(G * H, X)).astype(dtype)
    R = rng.uniform(-s, s, size=(G * H, H)).astype(dtype)
    b = np.zeros(G * H, dtype=dtype)
    return W, R, b


def step_grads(
    cell: Cell, p: Params, cache: Any, h: Array, dh2: Array, dc2: Array | None
) -> tuple[Array, Array, Array | None, Params]:
    """Backprop one step and assemble full parameter gradients (for tests and single-step use).

    Returns ``(dax, dh, dc, grads)`` where ``grads`` has ``R`` and any vector parameters; ``W`` and ``b``
    follow from ``dax`` as ``dW = dax @ x.T`` and ``db = dax.sum(1)``.
    """
    dax, dh, dc, rec, vec = cell.backward(p, cache, dh2, dc2)
    grads: Params = {k: np.zeros_like(v) for k, v in p.items() if k not in ("W", "b")}
    for index, dpre, operand in rec:
        rows, cols = split_index(index)
        d = dax[rows] if dpre is None else dpre
        o = h[cols] if operand is None else operand
        grads["R"][rows, cols] += d @ o.T
    for k, v in vec.items():
        grads[k] += v
    return dax, dh, dc, grads
