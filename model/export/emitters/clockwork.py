"""One step of the Clockwork RNN (:mod:`model.cells.clockwork`) as explicit ONNX ops.

The state ``c`` is the step counter ``[B, 1]`` (float32, kept modulo the largest period N = 2^(M-1), so it stays
an exact integer). Per unit, ``inv_period`` ``[H]`` holds 1/2^k for the unit's module k; ``RT_h`` is R with its
block-triangular mask applied (slower modules feed faster ones only; :mod:`model.export.weights`)::

    n     = Round(c)                                           [B, 1]
    r     = n * inv_period                                     [B, H]
    tick  = Equal(Floor(r), r)                                 module k ticks when n mod 2^k == 0
    h'    = Where(tick, tanh(h RT_h + ax_h), h)                a module that does not tick keeps its value
    n1    = n + 1
    c'    = n1 - Floor(n1 * inv_cycle) * cycle                 (n + 1) mod N

The same operations, in the same order, as the NumPy cell (all exact in float32: every divisor is a power of
two). Registered for :func:`model.export.cells.emit_step`, so the step and sequence graphs share it.
"""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter("clockwork")
def emit_clockwork(
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
) -> tuple[str, str]:
    """Emit one Clockwork RNN step under the current scope; returns the names of ``(h', counter')``."""
    assert c is not None
    k = names.extra
    n = gb.op1("Round", [c], "counter")
    r = gb.op1("Mul", [n, k["inv_period"]], "phase")
    tick = gb.op1("Equal", [gb.op1("Floor", [r], "phase_floor"), r], "tick")
    cand = gb.op1("Tanh", [product(gb, h, names.RT["h"], ax["h"], "gate_h", gemm)], "tanh_h")
    h2 = state_out(gb, "Where", [tick, cand, h], "h_new", out_h)
    n1 = gb.op1("Add", [n, k["one"]], "counter_plus_1")
    wraps = gb.op1(
        "Mul", [gb.op1("Floor", [gb.op1("Mul", [n1, k["inv_cycle"]], "cycles")], "cycles_floor"), k["cycle"]], "wrap"
    )
    c2 = state_out(gb, "Sub", [n1, wraps], "counter_new", out_c)
    return h2, c2
