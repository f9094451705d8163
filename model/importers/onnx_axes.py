"""What each axis of a tensor on the mapped path means, carried through layout ops (Transpose, Squeeze, ...).

An axis is an :class:`Ax`: one of the source model's input axes (``in0``, ``in1``: which is time and which is
batch is learned at the first recurrent node, whose ``X`` is ``[time, batch, features]`` or, with
``layout=1``, ``[batch, time, features]``), the feature axis ``F`` (its width known), a unit axis ``1``
(``num_directions``, or one added by ``Unsqueeze``), or several input axes merged by a ``Reshape``
(``in0*in1``). Every op here either keeps the meaning of every axis or is refused naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from model.errors import ConfigError
from model.importers.onnx_graph import Graph, attrs, int_list, node_label


@dataclass(frozen=True)
class Ax:
    """One axis: ``name`` (``in0``, ``F``, ``1``, ``in0*in1``) and its size where known."""

    name: str
    size: int | None

    @property
    def unit(self) -> bool:
        """A unit axis (``num_directions``, an ``Unsqueeze``); an input axis traced at size 1 is not one."""
        return self.name == "1"


UNIT = Ax("1", 1)


def feature(size: int) -> Ax:
    return Ax("F", size)


def describe(tags: list[Ax], names: dict[str, str]) -> list[str]:
    """Readable axis names (``time``, ``batch``, ``features``, ``1``) using the bindings ``names``."""
    out = []
    for t in tags:
        if t.name == "F":
            out.append("features")
        elif t.unit:
            out.append("1")
        else:
            out.append("*".join(names.get(p, p) for p in t.name.split("*")))
    return out


def _axes(g: Graph, node: onnx.NodeProto) -> list[int]:
    """The ``axes`` of Squeeze/Unsqueeze (an attribute before opset 13, an input since), as written."""
    a = attrs(node)
    if "axes" in a:
        return int_list(a["axes"])
    if len(node.input) > 1 and node.input[1]:
        return int_list(g.need_const(node, 1, "axes"))
    raise ConfigError(f"{node_label(node)}: input axes is missing; seqpred needs to know which axes change")


def transpose(node: onnx.NodeProto, tags: list[Ax]) -> list[Ax]:
    perm = attrs(node).get("perm", list(range(len(tags)))[::-1])
    if sorted(perm) != list(range(len(tags))):
        raise ConfigError(f"{node_label(node)}: attribute perm {perm!r} does not fit rank {len(tags)}")
    return [tags[p] for p in perm]


def squeeze(g: Graph, node: onnx.NodeProto, tags: list[Ax]) -> list[Ax]:
    axes = sorted(k % len(tags) for k in _axes(g, node))
    for k in axes:
        if not tags[k].unit:
            raise ConfigError(f"{node_label(node)}: attribute axes removes axis {k}, which is not of size 1")
    return [t for k, t in enumerate(tags) if k not in axes]


def unsqueeze(g: Graph, node: onnx.NodeProto, tags: list[Ax]) -> list[Ax]:
    raw = _axes(g, node)
    out = list(tags)
    for k in sorted(k % (len(tags) + len(raw)) for k in raw):
        out.insert(k, UNIT)
    return out


def reshape(g: Graph, node: onnx.NodeProto, tags: list[Ax]) -> list[Ax]:
    """A constant-shape Reshape that keeps the data axes (input axes, features) in order, adding or removing unit
    axes, or merging neighbouring input axes (time and batch) into one (``-1``); anything else (splitting axes,
    mixing features with time) is refused. An entry 1 takes an input axis of traced size 1 (an exporter that saw
    B = 1 writes the batch axis as 1) where one comes next, else it is a unit axis."""
    label = node_label(node)
    shape = int_list(g.need_const(node, 1, "shape"))
    allowzero = attrs(node).get("allowzero", 0)
    if shape.count(-1) > 1 or min(shape, default=0) < -1 or (allowzero and 0 in shape):
        raise ConfigError(f"{label}: input shape {shape} is not a reshape seqpred can follow")
    data = [t for t in tags if not t.unit]  # the axes that carry data, in order
    neg = shape.index(-1) if -1 in shape else len(shape)
    i, j = 0, len(data)  # data[i:j]: not placed yet

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{label}: input shape {shape} {why} of the mapped tensor {describe(tags, {})}")

    def place(k: int, v: int, at: int) -> tuple[Ax, int]:
        """The axis entry ``k`` (value ``v``) becomes, and how many data axes it takes (0 or 1) from ``data[at]``."""
        nxt = data[at] if i <= at < j else None
        if v == 0:
            if k >= len(tags):
                raise bad(f"copies axis {k}, which is not one")
            if tags[k].unit:
                return UNIT, 0
            if nxt != tags[k]:
                raise bad(f"moves axis {k}")
            return tags[k], 1
        if v == 1:
            return (nxt, 1) if nxt is not None and nxt.size == 1 else (UNIT, 0)
        if nxt is None or nxt.size not in (None, v):
            raise bad(f"gives axis {k} size {v}, which changes the axes")
        return nxt, 1

    left: list[Ax] = []
    for k in range(neg):
        ax, n = place(k, shape[k], i)
        left.append(ax)
        i += n
    right: list[Ax] = []
    for k in range(len(shape) - 1, neg, -1):
        ax, n = place(k, shape[k], j - 1)
        right.insert(0, ax)
        j -= n
    if neg == len(shape):
        if i != j:
            raise bad("drops axes")
        return left + right
    middle = data[i:j]
    if len(middle) > 1 and any(a.name == "F" for a in middle):
        raise bad("merges the feature axis with another axis")
    if not middle:
        merged = UNIT
    elif len(middle) == 1:
        merged = middle[0]
    else:
        merged = Ax("*".join(a.name for a in middle), None)
    return [*left, merged, *right]
