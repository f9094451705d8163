"""Read a PyTorch ``state_dict`` (``nn.Embedding`` + ``nn.LSTM``/``nn.GRU`` + ``nn.Linear``) from a safetensors
file into an :class:`~model.importers.spec.ImportedNet`. No pickle is ever loaded.

Keys (after ``--prefix``, which every key must start with) are matched by pattern, whatever the modules are
called::

    MOD.weight_ih_l{k} [G*H, X]   MOD.weight_hh_l{k} [G*H, H]   MOD.bias_ih_l{k}, MOD.bias_hh_l{k} [G*H]
    EMB.weight [V, E]             the embedding: a weight without a bias, E = the input width of layer 0
    LIN.weight [O, H], LIN.bias   the head: the module with a bias (or, without one, the other [*, H] weight)

PyTorch orders gates LSTM i, f, g, o and GRU r, z, n; ONNX (and this project) LSTM i, o, f, c and GRU z, r, h,
so the row blocks are permuted: LSTM ``[0, 3, 1, 2]``, GRU ``[1, 0, 2]``. ``bias_ih`` is ONNX's ``Wb`` and
``bias_hh`` its ``Rb``; ``nn.GRU`` is the ``linear_before_reset=1`` form (``gru-lbr``). Without an embedding
the model reads real-valued inputs. Missing and extra keys are listed by name; ``_reverse`` keys
(bidirectional) and ``weight_hr`` (``proj_size``) are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ConfigError
from model.importers.spec import ImportedNet, RecurrentLayer, f64

ARCHS = {"lstm": ("LSTM", 4, [0, 3, 1, 2]), "gru": ("GRU", 3, [1, 0, 2])}
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_RNN_KEY = re.compile(
    r"^(?:(?P<mod>.+)\.)?(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<k>\d+)(?P<rev>_reverse)?$"
)
_HEAD_HINTS = ("linear", "lin", "fc", "head", "out", "decoder", "proj", "classifier")
_FLOATS = {"F16", "F32", "F64"}


def read_state_dict(path: Path, *, arch: str, layers: int, prefix: str = "") -> tuple[ImportedNet, str]:
    """The network a ``state_dict`` in the safetensors file ``path`` holds, and the file's sha256."""
    if arch not in ARCHS:
        raise ConfigError(f"--arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"--layers: must be a positive integer, got {layers!r}")
    tensors, digest = _load(path)
    outside = sorted(k for k in tensors if not k.startswith(prefix))
    if outside:
        raise ConfigError(f"state: extra keys outside --prefix {prefix!r}: {', '.join(outside)}")
    rel = {k[len(prefix) :]: v for k, v in tensors.items()}
    op, G, perm = ARCHS[arch]
    rnn, rest = _recurrent_keys(rel, layers, prefix)
    mod = rnn["module"]
    net_layers = []
    for k in range(layers):
        W, R = rel[f"{mod}weight_ih_l{k}"], rel[f"{mod}weight_hh_l{k}"]
        H = R.shape[1] if R.ndim == 2 else 0
        for key, a, width in ((f"{mod}weight_ih_l{k}", W, None), (f"{mod}weight_hh_l{k}", R, H)):
            if a.ndim != 2 or a.shape[0] != G * H or (width is not None and a.shape[1] != width):
                raise ConfigError(f"state: {prefix}{key} has shape {list(a.shape)}; --arch {arch} needs [{G}*H, ...]")
        zeros = np.zeros(G * H)
        b_ih = rel.get(f"{mod}bias_ih_l{k}", zeros)
        b_hh = rel.get(f"{mod}bias_hh_l{k}", zeros)
        for key, b in ((f"{mod}bias_ih_l{k}", b_ih), (f"{mod}bias_hh_l{k}", b_hh)):
            if b.shape != (G * H,):
                raise ConfigError(f"state: {prefix}{key} has shape {list(b.shape)}, expected [{G * H}]")
        net_layers.append(
            RecurrentLayer(
                op=op,
                source=f"keys {prefix}{mod}*_l{k}",
                W=_gates(W, perm),
                R=_gates(R, perm),
                Wb=_gates(b_ih, perm),
                Rb=_gates(b_hh, perm),
                linear_before_reset=op == "GRU",
            )
        )
    H = net_layers[0].hidden
    E = net_layers[0].W.shape[1]
    emb, head = _roles(rest, E, H, prefix)
    hw = rest[head]["weight"]
    hb = rest[head].get("bias", np.zeros(hw.shape[0]))
    record: dict[str, Any] = {
        "prefix": prefix,
        "recurrent": f"{prefix}{mod}*",
        "head": f"{prefix}{head}.*",
        "embedding": None if emb is None else f"{prefix}{emb}.weight",
        "gate_permutation": {"from": "i, f, g, o" if op == "LSTM" else "r, z, n", "blocks": perm},
    }
    net = ImportedNet(
        layers=net_layers,
        head_W=f64(hw),
        head_b=f64(hb),
        embed=None if emb is None else f64(rest[emb]["weight"]),
        input_dim=0 if emb is not None else E,
        output="logits" if emb is not None else "linear",
        record=record,
    )
    return net, digest


def _gates(a: np.ndarray, perm: list[int]) -> np.ndarray:
    """Row blocks of ``a`` ``[G*H, ...]`` reordered: block j of the result is block ``perm[j]`` of ``a``."""
    blocks = np.split(f64(a), len(perm), axis=0)
    return np.ascontiguousarray(np.concatenate([blocks[j] for j in perm], axis=0))


def _recurrent_keys(rel: dict[str, np.ndarray], layers: int, prefix: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The recurrent module's name (with its trailing dot) and the other keys grouped by module."""
    rnn: dict[str, set[str]] = {}
    rest: dict[str, dict[str, np.ndarray]] = {}
    extra: list[str] = []
    for key in sorted(rel):
        m = _RNN_KEY.match(key)
        if m is None:
            mod, _, leaf = key.rpartition(".")
            if leaf in ("weight", "bias") and mod:
                rest.setdefault(mod, {})[leaf] = rel[key]
            else:
                extra.append(prefix + key)
            continue
        if m["rev"]:
            raise ConfigError(f"state: key {prefix + key!r} is a bidirectional layer's; seqpred imports forward ones")
        if m["kind"] == "weight_hr":
            raise ConfigError(f"state: key {prefix + key!r} is a projection (proj_size); seqpred has no cell for it")
        mod = f"{m['mod']}." if m["mod"] else ""
        rnn.setdefault(mod, set()).add(key)
    if not rnn:
        raise ConfigError(f"state: missing keys {prefix}*.weight_ih_l0, {prefix}*.weight_hh_l0 (no recurrent layer)")
    if len(rnn) > 1:
        raise ConfigError(
            f"state: recurrent weights under several modules: {', '.join(prefix + m for m in sorted(rnn))}"
        )
    mod, found = next(iter(rnn.items()))
    need = [f"{mod}{w}_l{k}" for k in range(layers) for w in ("weight_ih", "weight_hh")]
    for k in range(layers):  # biases: both or neither (bias=False)
        pair = [f"{mod}bias_ih_l{k}", f"{mod}bias_hh_l{k}"]
        if any(p in found for p in pair):
            need += pair
    missing = [prefix + k for k in need if k not in found]
    if missing:
        raise ConfigError(f"state: missing keys for --layers {layers}: {', '.join(missing)}")
    extra += [prefix + k for k in sorted(found - set(need))]
    if extra:
        raise ConfigError(f"state: extra keys: {', '.join(extra)}")
    return {"module": mod}, rest


def _roles(rest: dict[str, dict[str, np.ndarray]], E: int, H: int, prefix: str) -> tuple[str | None, str]:
    """Which module is the head and which (if any) the embedding; every other key is extra."""
    with_bias = [m for m, t in rest.items() if "bias" in t]
    if len(with_bias) > 1:
        raise ConfigError(f"state: extra keys: {', '.join(f'{prefix}{m}.bias' for m in with_bias[1:])} (one head)")
    if with_bias:
        head = with_bias[0]
    else:
        cands = [m for m, t in rest.items() if t["weight"].ndim == 2 and t["weight"].shape[1] == H]
        named = [m for m in cands if m.rpartition(".")[2].lower() in _HEAD_HINTS]
        if len(cands) == 1 or len(named) == 1:
            head = cands[0] if len(cands) == 1 else named[0]
        else:
            raise ConfigError(
                f"state: missing keys {prefix}*.weight [O, {H}] and {prefix}*.bias [O] (the head nn.Linear)"
                if not cands
                else f"state: cannot tell the head among {', '.join(f'{prefix}{m}.weight' for m in cands)}"
            )
    w = rest[head]["weight"]
    if w.ndim != 2 or w.shape[1] != H or ("bias" in rest[head] and rest[head]["bias"].shape != (w.shape[0],)):
        shapes = {k: list(v.shape) for k, v in rest[head].items()}
        raise ConfigError(f"state: head {prefix}{head}.* has shapes {shapes}; expected weight [O, {H}], bias [O]")
    others = [m for m in rest if m != head]
    if len(others) > 1 or (others and (rest[others[0]]["weight"].ndim != 2 or rest[others[0]]["weight"].shape[1] != E)):
        extra = [f"{prefix}{m}.{leaf}" for m in others for leaf in rest[m]]
        raise ConfigError(f"state: extra keys: {', '.join(extra)} (expected one embedding [V, {E}])")
    return (others[0] if others else None), head


def _load(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The tensors of a safetensors file and its sha256; a pickle file gets the two lines that convert it."""
    if not path.is_file():
        raise ConfigError(f"state: {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    header = _header(data)
    if header is None:
        if path.suffix.lower() in PICKLE_SUFFIXES or data[:2] in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05"):
            st = path.with_suffix(".safetensors").name
            raise ConfigError(
                f"state: {str(path)!r} is a pickle file, which seqpred never loads; convert it in PyTorch: "
                f"sd = torch.load({path.name!r}, map_location='cpu', weights_only=True); "
                f"safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items()}}, {st!r})"
            )
        raise ConfigError(f"state: {str(path)!r} is not a safetensors file")
    for key, info in header.items():
        if key != "__metadata__" and info.get("dtype") not in _FLOATS:
            raise ConfigError(f"state: tensor {key!r} has dtype {info.get('dtype')}; seqpred reads F16, F32, F64")
    try:
        from safetensors.numpy import load
    except ImportError:
        raise ConfigError(
            "state: reading safetensors needs the package safetensors: pip install 'seqpred[import]'"
        ) from None
    try:
        tensors = load(data)
    except Exception as e:  # SafetensorError: a truncated or inconsistent file
        raise ConfigError(f"state: {str(path)!r} is not a valid safetensors file ({e})") from None
    return tensors, hashlib.sha256(data).hexdigest()


def _header(data: bytes) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None."""
    if len(data) < 10:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if not 2 <= n <= len(data) - 8 or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None
