"""A floor for ``sequence.onnx`` on onnxruntime: our LSTM graph with the cell's elementwise math taken out.

``floor_sequence_model`` copies the fp32 ``sequence.onnx`` of a one-layer LSTM and replaces its Scan body by the
work that no explicit-op body can avoid, in its cheapest form::

    ax   = table[tok]                  one Gather (both gate groups' folded tables side by side)  [B, 4H]
    S    = Sigmoid(h R^T + ax)         one Gemm for all four gates, its activation fused by onnxruntime
    h', c' = S[:, :H], S[:, H:2H]      the new state, two Slices (our body splits the gates once too)
    h_seq, c_seq = h', c'              the per-step outputs, two Identity copies (as in our body)

so 6 kernels per step where the real body has 12: it drops the cell's five elementwise ops (f∘c, i∘c~, their
sum, tanh(c'), o∘tanh(c')) and merges the two gate Gemms into one. Everything outside the loop (head, scoring,
final-state gathers) is unchanged, so timing it next to ``sequence.onnx`` and the native ``LSTM`` op shows how
much of the gap to the native op any rearrangement of the cell's own math could close. Its outputs are not an
LSTM's; only its speed means anything.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def floor_sequence_model(sequence: onnx.ModelProto) -> onnx.ModelProto:
    """The floor variant of a one-layer LSTM ``sequence.onnx`` (fp32, token input); see the module docstring."""
    m = copy.deepcopy(sequence)
    scans = [n for n in m.graph.node if n.op_type == "Scan"]
    if len(scans) != 1:
        raise ValueError(f"floor: expected the one Scan of a one-layer model, found {len(scans)}")
    (scan,) = scans
    body_attr = next(a for a in scan.attribute if a.name == "body")
    old = body_attr.g
    if [len(old.input), len(old.output)] != [3, 4]:
        raise ValueError("floor: expected an LSTM body with inputs (h, c, tokens) and outputs (h, c, h_seq, c_seq)")
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    try:
        table = np.concatenate([inits["layer0/table_iof"], inits["layer0/table_c"]], axis=1)
        RT = np.concatenate([inits["layer0/RT_iof"], inits["layer0/RT_c"]], axis=1)
    except KeyError as e:
        raise ValueError(f"floor: not a one-layer fp32 LSTM sequence graph (no initializer {e})") from None
    H = RT.shape[0]
    h, _, tok = (i.name for i in old.input)
    nodes = [
        helper.make_node("Gather", ["floor/table", tok], ["floor/ax"], name="floor/input"),
        helper.make_node("Gemm", [h, "floor/RT", "floor/ax"], ["floor/pre"], name="floor/gates"),
        helper.make_node("Sigmoid", ["floor/pre"], ["floor/S"], name="floor/sigmoid"),
        helper.make_node("Slice", ["floor/S", "floor/0", "floor/H", "floor/1"], ["floor/h"], name="floor/h_new"),
        helper.make_node("Slice", ["floor/S", "floor/H", "floor/2H", "floor/1"], ["floor/c"], name="floor/c_new"),
        helper.make_node("Identity", ["floor/h"], ["floor/h_seq"], name="floor/h_seq"),
        helper.make_node("Identity", ["floor/c"], ["floor/c_seq"], name="floor/c_seq"),
    ]
    bounds = {"floor/0": 0, "floor/1": 1, "floor/H": H, "floor/2H": 2 * H}  # Slice starts, ends and axis
    local = [
        numpy_helper.from_array(table.astype(np.float32), "floor/table"),
        numpy_helper.from_array(RT.astype(np.float32), "floor/RT"),
        *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in bounds.items()),
    ]
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", H])
        for n in ("floor/h", "floor/c", "floor/h_seq", "floor/c_seq")
    ]
    body = helper.make_graph(nodes, "floor_step", list(old.input), outs, initializer=local)
    body_attr.g.CopyFrom(body)
    onnx.checker.check_model(m, full_check=True)
    return m
