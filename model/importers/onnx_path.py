"""The mapped path of a source ONNX graph: the served output, the chain of nodes back to the model input, and
the check that everything off the path is state plumbing (see :mod:`model.importers.onnx_chain`)."""

from __future__ import annotations

import onnx

from model.errors import ConfigError
from model.importers.onnx_graph import Graph, node_label
from model.importers.spec import RECURRENT_OPS

LAYOUT_OPS = ("Identity", "Dropout", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Reshape")
AFFINE_OPS = ("MatMul", "Add", "Gemm")
CHAIN_OPS = frozenset({"Gather", *AFFINE_OPS, *RECURRENT_OPS, *LAYOUT_OPS, "LogSoftmax", "Softmax"})
#: Ops allowed off the path: the state plumbing (see :mod:`model.importers.onnx_chain`), and any op whose output is
#: a constant (weights an exporter did not fold).
GLUE_OPS = frozenset(
    {"Constant", "Shape", "Size", "Gather", "Slice", "Split", "Squeeze", "Unsqueeze", "Reshape", "Identity"}
    | {"Concat", "Expand", "ConstantOfShape", "Cast", "Transpose", "Tile"}
)


def served_output(g: Graph) -> str:
    """The one graph output computed from a recurrent node's per-step output ``Y``."""
    found = [o for o in g.outputs if reads_y(g, o)]
    if not found:
        for o in g.outputs:  # an output computed (not just gathered) from a final state: say which node and why
            if any(n.op_type in AFFINE_OPS for n in _ancestors(g, o)):
                chain_of(g, o)
        raise ConfigError("model: no graph output is computed from the Y output of an LSTM, GRU or RNN node")
    if len(found) > 1:
        raise ConfigError(f"model: graph outputs {', '.join(map(repr, found))} all read Y; seqpred serves one")
    return found[0]


def _ancestors(g: Graph, name: str) -> list[onnx.NodeProto]:
    """Every node tensor ``name`` depends on."""
    seen: set[str] = set()
    out, todo = [], [name]
    while todo:
        t = todo.pop()
        node = g.producer.get(t)
        if node is None or t in seen:
            continue
        seen.add(t)
        out.append(node)
        todo.extend(i for i in node.input if i)
    return out


def reads_y(g: Graph, name: str) -> bool:
    """True when tensor ``name`` is computed from a recurrent node's ``Y`` (a final state ``Y_h``/``Y_c`` does not
    count, nor what that node read)."""
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        node = g.producer.get(t)
        if node is None or t in seen:
            continue
        seen.add(t)
        if node.op_type in RECURRENT_OPS:
            if node.output[0] == t:
                return True
            continue  # a final state (Y_h, Y_c): a state output, whatever the layer read
        todo.extend(i for i in node.input if i)
    return False


def chain_of(g: Graph, out: str) -> tuple[list[onnx.NodeProto], str]:
    """The nodes of the mapped path, input to output, and the graph input it starts at."""
    chain: list[onnx.NodeProto] = []
    t = out
    while t not in g.input_names:
        node = g.producer.get(t)
        if node is None:
            raise ConfigError(f"model: the served output {out!r} does not depend on a graph input")
        label = node_label(node)
        if node.op_type in RECURRENT_OPS and node.output[0] != t:
            which = ["Y", "Y_h", "Y_c"][list(node.output).index(t)]
            raise ConfigError(
                f"{label}: output {which} (the final state) feeds the served output; seqpred maps models that "
                "predict at every step from Y"
            )
        if node.op_type not in CHAIN_OPS:
            raise ConfigError(
                f"{label}: operator {node.op_type} is not one seqpred maps (on the path from input to output it "
                "maps Gather, MatMul, Add, Gemm, LSTM, GRU, RNN, LogSoftmax, Softmax and layout ops)"
            )
        chain.append(node)
        t = data_input(g, node)
    chain.reverse()
    return chain, t


def data_input(g: Graph, node: onnx.NodeProto) -> str:
    """The input of ``node`` that carries the mapped data (the others must be constants)."""
    label = node_label(node)
    if node.op_type == "Gather":
        g.need_const(node, 0, "data (the embedding table)")
        return node.input[1]
    if node.op_type in AFFINE_OPS:
        computed = [k for k in (0, 1) if g.const(node.input[k]) is None]
        if len(computed) != 1:
            what = "both operands are computed" if computed else "both operands are constants"
            raise ConfigError(f"{label}: {what}; seqpred maps affine ops with one constant operand")
        if node.op_type == "Gemm" and computed != [0]:
            raise ConfigError(f"{label}: input A is a constant and B computed; seqpred maps x·B + C heads")
        if node.op_type == "MatMul" and computed != [0]:
            raise ConfigError(f"{label}: input A is a constant; seqpred maps x·W with the weights second")
        return node.input[computed[0]]
    return node.input[0]


def check_off_path(g: Graph, chain: list[onnx.NodeProto], start: str, main: str) -> None:
    """Every node off the mapped path is state plumbing that reads no mapped tensor except through Shape."""
    on_path = {id(n) for n in chain}
    mapped = {start, *(n.output[0] for n in chain)}
    for o in g.outputs:
        if o != main and o in mapped:
            raise ConfigError(f"model: graph output {o!r} is an intermediate of the served path; seqpred serves one")
    for node in g.nodes:
        if id(node) in on_path:
            continue
        label = node_label(node)
        if node.op_type in RECURRENT_OPS:
            raise ConfigError(f"{label}: not on the path from the model input to its served output")
        if all(g.is_constant(o) for o in node.output if o):
            continue  # computes a constant (weights an exporter did not fold): read through Graph.const
        if node.op_type not in GLUE_OPS:
            raise ConfigError(
                f"{label}: operator {node.op_type} is neither on the served path nor state plumbing seqpred maps"
            )
        if node.op_type not in ("Shape", "Size") and any(i in mapped for i in node.input):
            t = next(i for i in node.input if i in mapped)
            raise ConfigError(f"{label}: reads {t!r} from the served path (a branch seqpred has no cell for)")
