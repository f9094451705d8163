"""The top-k extension of ``sequence.onnx`` for offline scoring: a ``TopK`` over the head's per-step
log-probabilities, added to the loaded graph in memory (nothing is written)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.errors import ConfigError

#: Names of the outputs the top-k extension adds to ``sequence.onnx`` (time-major ``[T, B, K]``).
TOP_IDS, TOP_LOGPROBS = "scoring/top_ids", "scoring/top_logprobs"
_LOGP, _LOGITS, _LSE = "head/log_softmax", "head/logits", "head/logsumexp"


def with_top_k(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """A copy of a ``sequence.onnx`` model that also outputs the top ``k`` log-probabilities after every step.

    Adds ``TopK`` over the head's per-step log-probabilities as ``scoring/top_logprobs [T, B, k]`` (float32) and
    the token ids as ``scoring/top_ids [T, B, k]``: row ``t`` is the prediction after ``tokens[:, : t + 1]``.
    The graph exposes them as ``head/log_softmax`` (or, in earlier exports, as ``head/logits`` minus
    ``head/logsumexp``). Raises ConfigError when it has neither (not a seqpred export).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    produced = {o for node in g.node for o in node.output}
    g.initializer.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "scoring/k"))
    if _LOGP in produced:
        nodes = [
            helper.make_node("TopK", [_LOGP, "scoring/k"], ["scoring/top_lp", TOP_IDS], name="scoring/top_k", axis=-1)
        ]
    elif _LOGITS in produced and _LSE in produced:
        g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "scoring/last_axis"))
        nodes = [
            helper.make_node(
                "TopK", [_LOGITS, "scoring/k"], ["scoring/top_logits", TOP_IDS], name="scoring/top_k", axis=-1
            ),
            helper.make_node("Unsqueeze", [_LSE, "scoring/last_axis"], ["scoring/lse"], name="scoring/lse"),
            helper.make_node("Sub", ["scoring/top_logits", "scoring/lse"], ["scoring/top_lp"], name="scoring/sub"),
        ]
    else:
        raise ConfigError(f"--top-k: sequence.onnx has no tensor {_LOGP!r} to take the top-k from")
    nodes.append(
        helper.make_node("Cast", ["scoring/top_lp"], [TOP_LOGPROBS], name="scoring/cast", to=TensorProto.FLOAT)
    )
    g.node.extend(nodes)
    g.output.extend(
        [
            helper.make_tensor_value_info(TOP_LOGPROBS, TensorProto.FLOAT, ["time", "batch", k]),
            helper.make_tensor_value_info(TOP_IDS, TensorProto.INT64, ["time", "batch", k]),
        ]
    )
    return m
