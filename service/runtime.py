"""The model on onnxruntime: one inference session per graph, the state memory, and batched calls over slots.

A model directory (written by ``seqpred export``) holds ``step.onnx``, ``sequence.onnx`` and ``model.json``. The
runtime also derives a *head* graph (top-layer ``h`` -> next-token log-probabilities) from ``step.onnx``, or loads
``head.onnx`` when the directory has one: it gives the distribution after a session's last token without
advancing it (scoring the first token of a continuation, generating from a session without new tokens), so that
no per-session copy of the last distribution needs to be kept.

Session states live in a :class:`StateMemory` indexed by slot: on the CPU one lazily committed host mapping of
K planes ``[N, W_k]`` (K state tensors per session: h0, c0, h1, ...; W_k = H for h, the cell's ``c_width`` for c);
on CUDA one device buffer ``[N, W_k]`` per state tensor,
gathered and scattered by two tiny graphs, so that states never leave the device and only the outputs a batch
asked for are copied to the host (IOBinding).
"""

from __future__ import annotations

import hashlib
import mmap
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from model.config import ModelConfig
from model.errors import SeqpredError
from model.export.signature import state_tensors
from model.tokenizers import Tokenizer
from service.errors import ModelLoadError, NoHeadGraph, SettingsError

STEP = "step.onnx"
SEQUENCE = "sequence.onnx"
HEAD = "head.onnx"
MANIFEST = "model.json"

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class ModelBundle:
    """A verified model directory: paths, config, tokenizer, and what the server reports about it."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    precision: str
    manifest_sha256: str
    manifest: dict[str, Any]

    @property
    def step_path(self) -> Path:
        return self.path / STEP

    @property
    def sequence_path(self) -> Path:
        return self.path / SEQUENCE

    def graph_bytes(self, fname: str) -> bytes:
        """The bytes of graph file ``fname``, checked against the manifest's sha256 as they are read (the bytes
        handed to onnxruntime are the bytes verified); a file the manifest does not list is refused."""
        entry = next((g for g in self.manifest.get("graphs", {}).values() if g.get("file") == fname), None)
        fpath = self.path / fname
        if entry is None:
            raise ModelLoadError(
                f"model: {fpath}: not listed in {MANIFEST}'s graphs, so its sha256 cannot be checked; remove it or "
                "list it with its sha256"
            )
        try:
            data = fpath.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"model: {fpath}: unreadable ({e.strerror or e})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("sha256"):
            raise ModelLoadError(
                f"model: {fpath}: sha256 {digest[:12]}... does not match the manifest's "
                f"{str(entry.get('sha256'))[:12]}... (file modified or corrupt)"
            )
        return data


def load_bundle(path: str | Path) -> ModelBundle:
    """Read a model directory with :func:`model.export.load_model_dir` (which verifies every graph's sha256);
    any problem raises :class:`ModelLoadError` naming the file."""
    from model.export import load_model_dir

    root = Path(path)
    try:
        md = load_model_dir(root)
    except SeqpredError as e:
        raise ModelLoadError(f"model: {e}") from None
    if not md.config.token_input or md.tokenizer is None:
        raise ModelLoadError(
            f"model: {str(root)!r} is a regression model (head {md.config.head!r}); serving needs a token model"
        )
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    return ModelBundle(root, md.config, md.tokenizer, md.precision, digest, md.manifest)


# ----------------------------------------------------------------------------------------------------------------
# State memory


class StateMemory(ABC):
    """Per-session recurrent state: ``K`` vectors per slot (h0, c0, h1, ...), vector k of ``widths[k]`` values
    (``c`` is as wide as the cell needs: H for the LSTM family, 4H for fgr, 1 for clockwork's step counter), all
    zero when a slot is fresh."""

    capacity: int
    widths: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def K(self) -> int:
        return len(self.widths)

    @property
    def bytes_per_slot(self) -> int:
        return sum(self.widths) * self.dtype.itemsize

    @abstractmethod
    def zero(self, slot: int) -> None:
        """Reset one slot to the zero state."""

    @abstractmethod
    def read(self, slot: int) -> list[np.ndarray]:
        """Host copies of one slot's K vectors ``[widths[k]]``."""

    @abstractmethod
    def write(self, slot: int, values: list[np.ndarray]) -> None:
        """Overwrite one slot with K vectors ``[widths[k]]``."""

    def release(self, first_free: int) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Hint: slots ``>= first_free`` are all free; their memory may go back to the operating system."""


def _widths(widths: Sequence[int] | None, K: int, H: int) -> tuple[int, ...]:
    return tuple(int(w) for w in widths) if widths is not None else (H,) * K


class HostStateMemory(StateMemory):
    """One anonymous mapping holding K planes ``[N, widths[k]]`` back to back: pages are committed when first
    written and can be released again.

    ``widths`` lists the width of each state tensor; ``K`` and ``H`` are a shorthand for K tensors of width H.
    """

    def __init__(
        self,
        capacity: int,
        widths: Sequence[int] | None = None,
        dtype: Any = np.float32,
        *,
        K: int = 0,
        H: int = 0,
    ) -> None:
        self.capacity, self.widths = capacity, _widths(widths, K, H)
        self.dtype = np.dtype(dtype)
        size = self.dtype.itemsize
        nbytes = max(1, capacity * sum(self.widths) * size)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        self._map = mmap.mmap(-1, nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._offsets = np.concatenate([[0], np.cumsum([capacity * w * size for w in self.widths])]).astype(int)
        self.planes = [
            np.frombuffer(self._map, dtype=self.dtype, count=capacity * w, offset=int(off)).reshape(capacity, w)
            for w, off in zip(self.widths, self._offsets, strict=False)
        ]
        self._released_from = capacity

    def zero(self, slot: int) -> None:
        for a in self.planes:
            a[slot] = 0

    def read(self, slot: int) -> list[np.ndarray]:
        return [a[slot].copy() for a in self.planes]

    def write(self, slot: int, values: list[np.ndarray]) -> None:
        for a, v in zip(self.planes, values, strict=True):
            a[slot] = v

    def gather(self, slots: np.ndarray) -> list[np.ndarray]:
        """K arrays ``[B, widths[k]]``: for one slot, views of the planes (no copy); otherwise copies."""
        if len(slots) == 1:
            s = int(slots[0])
            return [a[s : s + 1] for a in self.planes]
        return [a[slots] for a in self.planes]

    def scatter(self, slots: np.ndarray, values: list[np.ndarray]) -> None:
        if len(slots) == 1:
            s = int(slots[0])
            for a, v in zip(self.planes, values, strict=True):
                a[s] = v[0]
            return
        for a, v in zip(self.planes, values, strict=True):
            a[slots] = v

    def release(self, first_free: int) -> None:
        """``madvise(MADV_DONTNEED)`` the whole pages above ``first_free`` in each of the K planes."""
        if first_free >= self._released_from or not hasattr(self._map, "madvise"):
            return
        page = mmap.PAGESIZE
        for k, w in enumerate(self.widths):
            start = int(self._offsets[k]) + first_free * w * self.dtype.itemsize
            start = -(-start // page) * page
            end = int(self._offsets[k + 1]) // page * page
            if end > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        self._released_from = first_free


class DeviceStateMemory(StateMemory):
    """K device buffers ``[N, widths[k]]`` (CUDA), read and written by a Gather graph and an in-place ScatterND
    graph.

    The ScatterND output is bound to the very buffer it reads, which onnxruntime's kernel detects and then skips
    its copy of the whole input: an in-place row update.
    """

    def __init__(
        self,
        capacity: int,
        widths: Sequence[int],
        dtype: Any,
        providers: list[Any],
        device_id: int = 0,
    ) -> None:
        self.capacity, self.widths = capacity, _widths(widths, 0, 0)
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        W = self.widths
        K = len(W)
        self.buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros((capacity, w), dtype=self.dtype), "cuda", device_id) for w in W
        ]
        gather = helper.make_graph(
            [helper.make_node("Gather", [f"slab{k}", "idx"], [f"g{k}"], axis=0, name=f"gather{k}") for k in range(K)],
            "gather_states",
            [helper.make_tensor_value_info(f"slab{k}", elem, ["N", W[k]]) for k in range(K)]
            + [helper.make_tensor_value_info("idx", TensorProto.INT64, ["B"])],
            [helper.make_tensor_value_info(f"g{k}", elem, ["B", W[k]]) for k in range(K)],
        )
        scatter = helper.make_graph(
            [
                helper.make_node("ScatterND", [f"slab{k}", "idx2", f"u{k}"], [f"o{k}"], name=f"scatter{k}")
                for k in range(K)
            ],
            "scatter_states",
            [helper.make_tensor_value_info(f"slab{k}", elem, ["N", W[k]]) for k in range(K)]
            + [helper.make_tensor_value_info("idx2", TensorProto.INT64, ["B", 1])]
            + [helper.make_tensor_value_info(f"u{k}", elem, ["B", W[k]]) for k in range(K)],
            [helper.make_tensor_value_info(f"o{k}", elem, ["N", W[k]]) for k in range(K)],
        )
        opset = [helper.make_opsetid("", 17)]
        self._gather = ort.InferenceSession(
            helper.make_model(gather, opset_imports=opset).SerializeToString(), providers=providers
        )
        self._scatter = ort.InferenceSession(
            helper.make_model(scatter, opset_imports=opset).SerializeToString(), providers=providers
        )

    def gather(self, slots: np.ndarray, to_host: bool = False) -> list[Any]:
        io = self._gather.io_binding()
        for k, buf in enumerate(self.buffers):
            io.bind_ortvalue_input(f"slab{k}", buf)
        io.bind_cpu_input("idx", np.ascontiguousarray(slots, dtype=np.int64))
        for k in range(self.K):
            io.bind_output(f"g{k}", "cpu" if to_host else "cuda", 0 if to_host else self.device_id)
        self._gather.run_with_iobinding(io)
        outs = io.get_outputs()
        return [o.numpy() for o in outs] if to_host else list(outs)

    def scatter(self, slots: np.ndarray, values: list[Any]) -> None:
        io = self._scatter.io_binding()
        for k, buf in enumerate(self.buffers):
            io.bind_ortvalue_input(f"slab{k}", buf)
            io.bind_ortvalue_output(f"o{k}", buf)
        io.bind_cpu_input("idx2", np.ascontiguousarray(slots, dtype=np.int64).reshape(-1, 1))
        for k, v in enumerate(values):
            if isinstance(v, np.ndarray):
                io.bind_cpu_input(f"u{k}", np.ascontiguousarray(v, dtype=self.dtype))
            else:
                io.bind_ortvalue_input(f"u{k}", v)
        self._scatter.run_with_iobinding(io)

    def zero(self, slot: int) -> None:
        self.write(slot, [np.zeros(w, dtype=self.dtype) for w in self.widths])

    def read(self, slot: int) -> list[np.ndarray]:
        return [g[0] for g in self.gather(np.array([slot]), to_host=True)]

    def write(self, slot: int, values: list[np.ndarray]) -> None:
        self.scatter(np.array([slot]), [np.asarray(v, dtype=self.dtype)[None] for v in values])


# ----------------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class StepOut:
    """One batched step: ``logprobs [B, V]`` after each row's token (None when nobody asked for it) and
    ``head [b, V]`` before it, for the rows listed in ``head_rows``."""

    logprobs: np.ndarray | None
    head: np.ndarray | None


@dataclass
class SequenceOut:
    """One batched sequence call: ``token_logprobs [B, T-1]`` (valid up to each row's length - 1),
    ``next_logprobs [B, V]`` after each row's last token, ``head [b, V]`` before each listed row's first token."""

    token_logprobs: np.ndarray | None
    next_logprobs: np.ndarray | None
    head: np.ndarray | None


# ----------------------------------------------------------------------------------------------------------------
# The runtime


def resolve_providers(device: str) -> list[Any]:
    """The onnxruntime providers for ``--device``; ``cuda`` without a CUDA build raises SettingsError."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise SettingsError(
            f"--device cuda: onnxruntime {ort.__version__} offers no CUDAExecutionProvider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu"
        )
    if device == "cuda" or (device == "auto" and has_cuda):
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _input_dtype(sess: ort.InferenceSession, name: str) -> np.dtype[Any]:
    for i in sess.get_inputs():
        if i.name == name:
            return np.dtype(_ORT_DTYPES.get(i.type, np.float32))
    raise ModelLoadError(f"model: graph has no input {name!r}")


class Runtime:
    """The loaded model: ``step``, ``sequence`` and ``head`` sessions, sharing one set of options.

    ``InferenceSession.run`` is thread-safe, so one runtime serves every worker thread.
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", intra_op_threads: int = 1) -> None:
        self.bundle = bundle
        self.config = bundle.config
        self.tokenizer = bundle.tokenizer
        self.providers = resolve_providers(device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # worker threads that spin while waiting for work would take the CPU from the event loop and the clients
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._opts = opts
        try:
            self.step_sess = ort.InferenceSession(bundle.graph_bytes(STEP), opts, providers=self.providers)
            self.seq_sess = ort.InferenceSession(bundle.graph_bytes(SEQUENCE), opts, providers=self.providers)
        except ModelLoadError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"model: onnxruntime cannot load {str(bundle.path)!r}: {e}") from None
        self.provider = self.step_sess.get_providers()[0]
        self.on_cuda = self.provider == "CUDAExecutionProvider"
        cfg = self.config
        states = state_tensors(cfg)
        names = [st.name for st in states]
        self.state_names = names
        self.state_widths = [st.width for st in states]
        self.state_out_names = [f"{n}_out" for n in names]
        self._check_io()
        self.dtype = _input_dtype(self.step_sess, names[0])
        self.top_h = names.index(f"h{cfg.layers - 1}")
        self.head_sess, self.head_input = self._load_head()

    # -- loading ----------------------------------------------------------------------------------------------

    def _check_io(self) -> None:
        want = {
            STEP: (["tokens", *self.state_names], ["logprobs", *self.state_out_names], self.step_sess),
            SEQUENCE: (
                ["tokens", "lengths", *self.state_names],
                ["token_logprobs", "next_logprobs", *self.state_out_names],
                self.seq_sess,
            ),
        }
        for graph, (ins, outs, sess) in want.items():
            got_in = [i.name for i in sess.get_inputs()]
            got_out = [o.name for o in sess.get_outputs()]
            if sorted(got_in) != sorted(ins) or not set(outs) <= set(got_out):
                raise ModelLoadError(
                    f"model: {graph} has inputs {got_in} and outputs {got_out}; the contract wants inputs {ins} "
                    f"and outputs {outs}"
                )

    def _load_head(self) -> tuple[ort.InferenceSession | None, str]:
        """``head.onnx`` if shipped, else the sub-graph of ``step.onnx`` from the top layer's h to ``logprobs``,
        kept only if it reproduces the step's own log-probabilities."""
        candidates: list[bytes] = []
        head_file = self.bundle.path / HEAD
        if head_file.is_file():
            m = onnx.load_from_string(self.bundle.graph_bytes(HEAD))
            candidates.append(m.SerializeToString())
        else:
            model = onnx.load_from_string(self.bundle.graph_bytes(STEP))
            top = f"h{self.config.layers - 1}_out"
            names = [top]
            for node in model.graph.node:
                if top in node.output and node.op_type == "Identity":
                    names.append(node.input[0])
            for name in names:
                try:
                    sub = onnx.utils.Extractor(model).extract_model([name], ["logprobs"])
                except Exception:
                    continue
                if [i.name for i in sub.graph.input] == [name]:
                    candidates.append(sub.SerializeToString())
        for data in candidates:
            try:
                sess = ort.InferenceSession(data, self._opts, providers=self.providers)
            except Exception:
                continue
            if self._head_matches(sess, sess.get_inputs()[0].name):
                return sess, sess.get_inputs()[0].name
        return None, ""

    def _head_matches(self, head: ort.InferenceSession, input_name: str) -> bool:
        rng = np.random.default_rng(0)
        B = 3
        states = [rng.standard_normal((B, w)).astype(self.dtype) for w in self.state_widths]
        tokens = rng.integers(0, self.config.vocab_size, B)
        feeds = {"tokens": tokens, **dict(zip(self.state_names, states, strict=True))}
        lp, h = self.step_sess.run(["logprobs", self.state_out_names[self.top_h]], feeds)
        (got,) = head.run(None, {input_name: h})
        tol = 1e-4 if self.dtype == np.float32 else 2e-2
        return bool(np.allclose(got, lp, atol=tol, rtol=tol))

    @property
    def has_head(self) -> bool:
        return self.head_sess is not None

    def new_state_memory(self, capacity: int) -> StateMemory:
        if self.on_cuda:
            return DeviceStateMemory(capacity, self.state_widths, self.dtype, self.providers)
        return HostStateMemory(capacity, self.state_widths, self.dtype)

    # -- batched calls ----------------------------------------------------------------------------------------

    def _head(self, h_top: Any) -> np.ndarray:
        assert self.head_sess is not None
        if isinstance(h_top, np.ndarray):
            (lp,) = self.head_sess.run(None, {self.head_input: h_top})
            return np.asarray(lp, dtype=np.float32)
        io = self.head_sess.io_binding()
        io.bind_ortvalue_input(self.head_input, h_top)
        io.bind_output(self.head_sess.get_outputs()[0].name, "cpu")
        self.head_sess.run_with_iobinding(io)
        return np.asarray(io.get_outputs()[0].numpy(), dtype=np.float32)

    def _head_rows(self, states: list[Any], head_rows: np.ndarray | None) -> np.ndarray | None:
        if head_rows is None or len(head_rows) == 0:
            return None
        top = states[self.top_h]
        if isinstance(top, np.ndarray):
            return self._head(top[head_rows])
        # on the device: run the head on the whole batch, keep the rows asked for
        return self._head(top)[head_rows]

    def step(
        self,
        mem: StateMemory,
        slots: np.ndarray,
        tokens: np.ndarray,
        head_rows: np.ndarray | None = None,
        want_logprobs: bool = True,
    ) -> StepOut:
        """Advance the sessions in ``slots`` by one token each (no slot twice)."""
        if isinstance(mem, HostStateMemory):
            states = mem.gather(slots)
            head = self._head_rows(states, head_rows)
            feeds = dict(zip(self.state_names, states, strict=True))
            feeds["tokens"] = tokens
            outs = self.step_sess.run(["logprobs", *self.state_out_names], feeds)
            mem.scatter(slots, outs[1:])
            return StepOut(outs[0] if want_logprobs else None, head)
        assert isinstance(mem, DeviceStateMemory)
        states = mem.gather(slots)
        head = self._head_rows(states, head_rows)
        io = self.step_sess.io_binding()
        io.bind_cpu_input("tokens", tokens)
        for name, v in zip(self.state_names, states, strict=True):
            io.bind_ortvalue_input(name, v)
        io.bind_output("logprobs", "cpu" if want_logprobs else "cuda", 0 if want_logprobs else mem.device_id)
        for name in self.state_out_names:
            io.bind_output(name, "cuda", mem.device_id)
        self.step_sess.run_with_iobinding(io)
        outs = io.get_outputs()
        mem.scatter(slots, list(outs[1:]))
        return StepOut(outs[0].numpy() if want_logprobs else None, head)

    def sequence(
        self,
        mem: StateMemory,
        slots: np.ndarray,
        tokens: np.ndarray,
        lengths: np.ndarray,
        head_rows: np.ndarray | None = None,
        want_tokens: bool = True,
        want_next: bool = True,
    ) -> SequenceOut:
        """Advance the sessions in ``slots`` by ``tokens[b, :lengths[b]]`` each (right-padded ``[B, T]``)."""
        outputs = ["token_logprobs", "next_logprobs", *self.state_out_names]
        if isinstance(mem, HostStateMemory):
            states = mem.gather(slots)
            head = self._head_rows(states, head_rows)
            feeds = dict(zip(self.state_names, states, strict=True))
            feeds["tokens"], feeds["lengths"] = tokens, lengths
            outs = self.seq_sess.run(outputs, feeds)
            mem.scatter(slots, outs[2:])
            return SequenceOut(outs[0] if want_tokens else None, outs[1] if want_next else None, head)
        assert isinstance(mem, DeviceStateMemory)
        states = mem.gather(slots)
        head = self._head_rows(states, head_rows)
        io = self.seq_sess.io_binding()
        io.bind_cpu_input("tokens", tokens)
        io.bind_cpu_input("lengths", lengths)
        for name, v in zip(self.state_names, states, strict=True):
            io.bind_ortvalue_input(name, v)
        for name, wanted in (("token_logprobs", want_tokens), ("next_logprobs", want_next)):
            io.bind_output(name, "cpu" if wanted else "cuda", 0 if wanted else mem.device_id)
        for name in self.state_out_names:
            io.bind_output(name, "cuda", mem.device_id)
        self.seq_sess.run_with_iobinding(io)
        outs = io.get_outputs()
        mem.scatter(slots, list(outs[2:]))
        return SequenceOut(outs[0].numpy() if want_tokens else None, outs[1].numpy() if want_next else None, head)

    def head(self, mem: StateMemory, slots: np.ndarray) -> np.ndarray:
        """Next-token log-probabilities ``[B, V]`` of the sessions in ``slots``, without advancing them."""
        if not self.has_head:
            raise NoHeadGraph(
                "model: no head graph (head.onnx, or a clean cut of step.onnx), so the distribution after a "
                "session's last token cannot be recomputed; send new tokens with top_k, score or generate"
            )
        if isinstance(mem, HostStateMemory):
            return self._head(mem.gather(slots)[self.top_h])
        assert isinstance(mem, DeviceStateMemory)
        return self._head(mem.gather(slots)[self.top_h])

    def score(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stateless scoring from the zero state: ``(token_logprobs [B, T-1], next_logprobs [B, V])``."""
        B = tokens.shape[0]
        feeds: dict[str, Any] = {
            n: np.zeros((B, w), dtype=self.dtype) for n, w in zip(self.state_names, self.state_widths, strict=True)
        }
        feeds["tokens"], feeds["lengths"] = tokens, lengths
        tl, nl = self.seq_sess.run(["token_logprobs", "next_logprobs"], feeds)
        return tl, nl
