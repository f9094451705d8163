"""The model on onnxruntime: one inference session per graph, and batched calls over slots.

A model directory (:mod:`service.runtime.bundle`, written by ``seqpred export``) holds ``step.onnx``, ``sequence.onnx``
and ``model.json``. The runtime also derives a *head* graph (top-layer ``h`` -> next-token log-probabilities) from
``step.onnx``, or loads ``head.onnx`` when the directory has one: it gives the distribution after a session's
last token without advancing it (scoring the first token of a continuation, generating from a session without new
tokens), so that no per-session copy of the last distribution needs to be kept.

Session states live in a :class:`~service.runtime.state_memory.StateMemory` indexed by slot (host planes on the CPU,
device buffers on CUDA, where states never leave the device and only the outputs a batch asked for are copied to
the host: IOBinding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from model.export.signature import state_tensors
from service.errors import ModelLoadError, NoHeadGraph, SettingsError
from service.runtime.bundle import HEAD, SEQUENCE, STEP, ModelBundle
from service.runtime.state_memory import DeviceStateMemory, HostStateMemory, StateMemory

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


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
