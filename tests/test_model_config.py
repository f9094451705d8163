"""Model configuration: validation and strict (de)serialisation."""

from __future__ import annotations

import pytest

from model.config import ModelConfig
from model.errors import ConfigError


def test_round_trip() -> None:
    cfg = ModelConfig(cell="gru-lbr", layers=3, hidden=7, vocab_size=11, embed=5, dropout=0.1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert not cfg.has_c and ModelConfig(cell="peephole", vocab_size=3).has_c


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'hiden'"):
        ModelConfig.from_dict({"hiden": 3, "vocab_size": 5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell": "tree"}, "cell: unknown cell 'tree'"),
        ({"layers": 0}, "layers: must be a positive integer, got 0"),
        ({"hidden": 2.5}, "hidden: must be a positive integer, got 2.5"),
        ({"dropout": 1.0}, "dropout: must be in [0, 1), got 1.0"),
        ({"vocab_size": 0}, "vocab_size: must be a positive integer, got 0"),
        ({"head": "mse", "input_dim": 0}, "input_dim: must be a positive integer, got 0"),
    ],
)
def test_invalid_values(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"vocab_size": 5}
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{**base, **kwargs})  # type: ignore[arg-type]
    assert message in str(e.value)
