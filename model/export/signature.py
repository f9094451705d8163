"""The public interface of an exported model: graph input/output names, shapes and the state layout.

This is the contract callers (the service, offline scoring) code against; ``model.json`` records it too.

``step.onnx`` (one time step; ``B`` dynamic)::

    inputs   tokens [B] int64        (numeric models: inputs [B, X] float32)
             h{l} [B, H], c{l} [B, C] per layer l (c only for cells with one; C = cfg.c_width: H for the
                                     LSTM family, 4H for fgr ([c; i; o; f]), 1 for clockwork (step counter))
    outputs  logprobs [B, V]         (numeric: output [B, O])
             h{l}_out, c{l}_out      the new state

``sequence.onnx`` (right-padded batches; ``B`` and ``T`` dynamic)::

    inputs   tokens [B, T] int64, lengths [B] int64   (numeric: inputs [B, T, X] float32, lengths)
             h{l}, c{l}                              the state before tokens[:, 0]
    outputs  token_logprobs [B, T-1]  log p(tokens[b, t+1] | tokens[b, :t+1]) for t + 1 < lengths[b],
                                      0 at padded positions (a row sums to its log-likelihood)
             next_logprobs [B, V]     log p(next token | the row's lengths[b] tokens)
             (numeric: outputs [B, T, O], predictions after each step, 0 at padded positions)
             h{l}_out, c{l}_out       the state after each row's own lengths[b] steps

``lengths`` are clipped to [0, T]; a row of length 0 keeps its initial state. ``T`` must be >= 1 (onnxruntime's
Scan refuses an empty time axis); scoring one token (T = 1) gives ``token_logprobs [B, 0]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import ModelConfig

BATCH = "batch"
TIME = "time"
TIME_M1 = "time_minus_1"


@dataclass(frozen=True)
class StateTensor:
    """One state tensor: ``h{l}`` ``[batch, H]`` or ``c{l}`` ``[batch, C]`` (C = ``cfg.c_width``), float32."""

    name: str
    layer: int
    kind: str  # "h" or "c"
    width: int  # H for h; cfg.c_width for c

    @property
    def out_name(self) -> str:
        return f"{self.name}_out"


def state_tensors(cfg: ModelConfig) -> list[StateTensor]:
    """The state inputs in graph order: ``h0, c0, h1, c1, ...`` (no ``c`` for GRU and RNN)."""
    out: list[StateTensor] = []
    C = cfg.c_width
    for l in range(cfg.layers):
        out.append(StateTensor(f"h{l}", l, "h", cfg.hidden))
        if C:
            out.append(StateTensor(f"c{l}", l, "c", C))
    return out


def state_names(cfg: ModelConfig) -> list[str]:
    return [s.name for s in state_tensors(cfg)]


def output_width(cfg: ModelConfig) -> int:
    """V for token models, O for numeric ones."""
    return cfg.vocab_size if cfg.token_input else cfg.output_dim
