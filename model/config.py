"""Model configuration: a frozen dataclass that every artifact (checkpoint, ONNX manifest) carries.

Unknown keys are an error that names the key, so a checkpoint written by a newer or different
version never loads silently with a different meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.errors import ConfigError

#: Where the trainer runs a batch's shards (``--shards-on``; see :mod:`model.train.shard_pool` for the default).
SHARDS_ON = ("processes", "threads")

#: Every cell the model library supports, by its ``--cell`` name.
CELLS = (
    "rnn",
    "lstm",
    "peephole",
    "cifg",
    "nig",
    "nfg",
    "nog",
    "niaf",
    "noaf",
    "depth-gated",
    "gru",
    "gru-lbr",
    "fgr",
    "clockwork",
)

#: Cells that carry a second state tensor ``c`` next to ``h`` (its width: :attr:`ModelConfig.c_width`).
CELLS_WITH_C = frozenset(
    {"lstm", "peephole", "cifg", "nig", "nfg", "nog", "niaf", "noaf", "depth-gated", "fgr", "clockwork"}
)

HEADS = ("softmax", "mse")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a network: embedding (or real-valued input), L recurrent layers, a linear head.

    Attributes:
        cell: recurrent cell name, one of :data:`CELLS`.
        layers: number of stacked recurrent layers L >= 1.
        hidden: hidden size H of every layer.
        vocab_size: V, number of token ids (``head == "softmax"``); 0 for real-valued models.
        embed: E, embedding width for token models.
        input_dim: X, width of real-valued input vectors (``head == "mse"``); 0 for token models.
        output_dim: width of the regression output (``head == "mse"``).
        head: ``"softmax"`` (next-token cross-entropy) or ``"mse"`` (regression).
        dropout: drop probability on the activations between layers while training.
        forget_bias: initial bias of the forget gate (Jozefowicz et al. 2015 recommend +1).
    """

    cell: str = "lstm"
    layers: int = 1
    hidden: int = 128
    vocab_size: int = 0
    embed: int = 64
    input_dim: int = 0
    output_dim: int = 1
    head: str = "softmax"
    dropout: float = 0.0
    forget_bias: float = 1.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell: unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.head not in HEADS:
            raise ConfigError(f"head: unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        _positive("layers", self.layers)
        _positive("hidden", self.hidden)
        if self.head == "softmax":
            _positive("vocab_size", self.vocab_size)
            _positive("embed", self.embed)
        else:
            _positive("input_dim", self.input_dim)
            _positive("output_dim", self.output_dim)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")

    @property
    def c_width(self) -> int:
        """Width of each layer's second state tensor ``c`` (the cell's ``c_width(hidden)``; 0 = state h only):
        H for the LSTM family, 4H for ``fgr`` ([c; i; o; f]), 1 for ``clockwork`` (its step counter)."""
        from model.cells import get_cell  # local import: model.cells may import this module

        return get_cell(self.cell).c_width(self.hidden)

    @property
    def has_c(self) -> bool:
        """True when the state is (h, c) (``c_width > 0``); False for GRU and RNN (state h only)."""
        return self.c_width > 0

    @property
    def token_input(self) -> bool:
        return self.head == "softmax"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)


def from_dict(cls: Any, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``data``; an unknown key raises :class:`ConfigError` naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key {unknown[0]!r}")
    return cls(**data)


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
