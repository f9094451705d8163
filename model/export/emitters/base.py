"""What every step emitter shares: the layer's initializer names, the product node, state outputs, the registry.

An emitter writes one recurrent step of one cell family as explicit ONNX ops under the builder's current scope
and returns the names of the new state ``(h', c')`` (``c'`` is None for cells with no second state). It
registers itself for the cell names it handles with :func:`emitter`; :func:`model.export.cells.emit_step` looks
the cell up in :data:`EMITTERS`, so adding a cell means adding a module here and nothing else in ``export/``.

Every emitter has one signature::

    emit(gb, cell, names, ax, h, c, out_h, out_c, gemm, low) -> (h', c' | None)

``names`` the layer's initializers (:class:`LayerNames`), ``ax[g]`` the input term of gate group ``g``
``[B, |g|]``, ``h``/``c`` the old state, ``out_h``/``out_c`` the graph-output names to write the new state to
(None: named after their nodes), ``gemm`` whether products are one Gemm (True) or MatMul + Add (int8), ``low``
the lower layer's new cell ``[B, H]`` (depth-gated above layer 0, None elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from model.export.builder import GraphBuilder


@dataclass(frozen=True)
class LayerNames:
    """Names of one layer's initializers in the outer graph (Scan bodies reference them from there)."""

    RT: dict[str, str]
    WT: dict[str, str] = field(default_factory=dict)
    b: dict[str, str] = field(default_factory=dict)
    table: dict[str, str] = field(default_factory=dict)
    P_if: str | None = None
    P_o: str | None = None
    Rb: str | None = None
    w_cd: str | None = None  # depth-gated above layer 0: the depth gate's weights on c and on the lower cell
    w_ld: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # cell-specific constants: layer{l}/{key} (fgr, clockwork)


class Emitter(Protocol):
    def __call__(
        self,
        gb: GraphBuilder,
        cell: str,
        names: LayerNames,
        ax: dict[str, str],
        h: str,
        c: str | None,
        out_h: str | None,
        out_c: str | None,
        gemm: bool,
        low: str | None,
    ) -> tuple[str, str | None]: ...


#: cell name -> the emitter that writes its step; filled by :func:`emitter` as the modules here are imported.
EMITTERS: dict[str, Emitter] = {}


E = TypeVar("E", bound=Emitter)


def emitter(*cells: str) -> Callable[[E], E]:
    """Register the decorated function as the step emitter of ``cells`` (each name at most once)."""

    def register(fn: E) -> E:
        for cell in cells:
            if cell in EMITTERS:
                raise ValueError(f"cell {cell!r} already has an emitter ({EMITTERS[cell]!r})")
            EMITTERS[cell] = fn
        return fn

    return register


def product(gb: GraphBuilder, x: str, weight: str, add: str, leaf: str, gemm: bool) -> str:
    """``x @ weight + add`` as one Gemm (C = ``add``) or, with ``gemm=False``, MatMul then Add."""
    if gemm:
        return gb.op1("Gemm", [x, weight, add], leaf)
    return gb.op1("Add", [gb.op1("MatMul", [x, weight], f"{leaf}/matmul"), add], leaf)


def state_out(gb: GraphBuilder, op: str, inputs: list[str], leaf: str, out: str | None) -> str:
    """The node that produces a state: written to the given graph-output name when there is one."""
    if out is None:
        return gb.op1(op, inputs, leaf)
    gb.op_to(op, inputs, [out], leaf)
    return out
