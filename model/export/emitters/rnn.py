"""One step of the vanilla RNN as explicit ONNX ops (:mod:`model.cells.rnn`): ``h' = tanh(h R^T + ax)``."""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter("rnn")
def emit_rnn(
    gb: GraphBuilder,
    cell: str,
    names: LayerNames,
    ax: dict[str, str],
    h: str,
    c: str | None,
    out_h: str | None,
    out_c: str | None,
    gemm: bool,
    low: str | None = None,
) -> tuple[str, None]:
    """One tanh step; no cell state."""
    pre = product(gb, h, names.RT["h"], ax["h"], "gate_h", gemm)
    return state_out(gb, "Tanh", [pre], "h_new", out_h), None
