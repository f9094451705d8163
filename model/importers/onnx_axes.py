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
        return self.size == 1


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
    """A constant-shape Reshape that only adds or removes unit axes, or merges neighbouring input axes (time and
    batch) into one; anything else (splitting axes, mixing features with time) is refused."""
    label = node_label(node)
    shape = int_list(g.need_const(node, 1, "shape"))
    allowzero = attrs(node).get("allowzero", 0)
    big = [t for t in tags if not t.unit]  # the axes that carry data, in order
    if shape.count(-1) > 1 or (allowzero and 0 in shape) or any(v == 0 and k >= len(tags) for k, v in enumerate(shape)):
        raise ConfigError(f"{label}: input shape {shape} is not a reshape seqpred can follow")
    # how many data axes each entry takes: a copied axis (0) or a size > 1 takes one, -1 takes the rest
    takes = [0 if (v == 1 or (v == 0 and tags[k].unit)) else 1 for k, v in enumerate(shape)]
    if -1 in shape:
        k = shape.index(-1)
        takes[k] = len(big) - (sum(takes) - 1)
    if sum(takes) != len(big) or min(takes) < 0:
        raise ConfigError(f"{label}: input shape {shape} changes axes of the mapped tensor {describe(tags, {})}")
    out: list[Ax] = []
    pos = 0
    for k, (v, n) in enumerate(zip(shape, takes, strict=True)):
        part = big[pos : pos + n]
        pos += n
        if n == 0:
            out.append(UNIT)
            continue
        if v == 0 and tags[k] != part[0]:
            raise ConfigError(f"{label}: input shape {shape} copies axis {k} to another place")
        if n == 1:
            ax = part[0]
            if v > 1 and ax.size != v:
                raise ConfigError(f"{label}: input shape {shape} gives axis {k} size {v}, it has {ax.size}")
            out.append(ax)
            continue
        if any(a.name == "F" for a in part):
            raise ConfigError(f"{label}: input shape {shape} merges the feature axis with another axis")
        out.append(Ax("*".join(a.name for a in part), None))
    return out
