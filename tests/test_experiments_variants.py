"""The variants experiment's pieces: the variant list follows the library's cells, the 90/10 char split, a
learning check, and the seeded run records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.config import CELLS
from model.errors import DataError
from model.experiments.variants import (
    REFERENCE,
    VariantsConfig,
    available_variants,
    load_char_data,
    plan,
    run_one,
    train_variant,
)


def test_variant_list_follows_the_cells() -> None:
    vs = available_variants(("rnn", "lstm", "peephole", "depth-gated", "gru"))
    assert list(vs) == ["rnn", "lstm", "peephole", "gru", "lstm-fb0", "lstm-2l", "depth-gated-2l"]
    assert {n: v.ref for n, v in vs.items()} == {
        "rnn": "peephole",
        "lstm": "peephole",
        "peephole": None,
        "gru": "peephole",
        "lstm-fb0": "lstm",
        "lstm-2l": "lstm",
        "depth-gated-2l": "lstm-2l",
    }
    assert (vs["lstm-fb0"].cell, vs["lstm-fb0"].forget_bias) == ("lstm", 0.0) and vs["lstm"].forget_bias == 1.0
    assert (vs["depth-gated-2l"].cell, vs["depth-gated-2l"].layers, vs["lstm-2l"].layers) == ("depth-gated", 2, 2)
    # without the reference or the lstm: no comparison column, no ablation
    assert list(available_variants(("gru", "rnn"))) == ["gru", "rnn"]
    assert all(v.ref is None for v in available_variants(("gru", "rnn")).values())
    assert list(available_variants(("gru", "depth-gated"))) == ["gru"]
    # the default: every cell the library has now (each non-deep cell at one layer)
    default = VariantsConfig(corpus="stdlib").variants
    assert set(CELLS) - {"depth-gated"} <= set(default) and "lstm-fb0" in default and REFERENCE in default


def test_char_data_splits_90_10_and_fits_on_train(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("ab" * 450 + "xyz" * 34 + "q")  # 1003 chars: the first 902 train ("ab"... "xy")
    data = load_char_data(VariantsConfig(corpus=str(path), batch=2, seq_len=8))
    assert (data.train_chars, data.val_chars) == (902, 101)
    assert data.vocab_size == 1 + 4 and len(data.train) == 902 and len(data.val) == 101  # <unk> a b x y
    assert int((data.val == 0).sum()) == 34 + 1  # every z and the q are unseen in training: <unk>
    with pytest.raises(DataError, match="fewer than batch"):
        load_char_data(VariantsConfig(corpus=str(path), batch=64, seq_len=64))


def test_lstm_learns_a_periodic_text(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("abcdefgh" * 1000)
    exp = VariantsConfig(corpus=str(path), hidden=16, embed=8, batch=4, seq_len=16, steps=120, eval_chars=800)
    data = load_char_data(exp)
    res = train_variant(exp, available_variants()["lstm"], 1e-2, 0, data)
    assert res.steps == 120 and not res.diverged and res.val_nats is not None
    assert res.val_nats < 0.2 < np.log(8), res.val_nats  # uniform over the 8 letters would be ln 8 = 2.08


def test_run_records_are_seeded_by_their_key(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat. " * 200)
    exp = VariantsConfig(
        variants=("gru", "lstm-fb0"),
        corpus=str(path),
        hidden=8,
        embed=4,
        batch=4,
        seq_len=8,
        steps=4,
        lrs=(1e-2,),
        seeds=1,
    )
    data = load_char_data(exp)
    assert plan(exp) == [("gru", 1e-2, 0), ("lstm-fb0", 1e-2, 0)]
    a, b = run_one((exp, data), ("lstm-fb0", 1e-2, 0)), run_one((exp, data), ("lstm-fb0", 1e-2, 0))
    assert a["val_nats"] == b["val_nats"] and a["forget_bias"] == 0.0 and a["cell"] == "lstm"
    c = run_one((exp, data), ("lstm-fb0", 1e-2, 1))
    assert c["val_nats"] != a["val_nats"] and c["params"] == a["params"] > 0
