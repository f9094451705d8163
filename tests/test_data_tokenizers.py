"""Tokenizers: round-trips, <unk> handling, serialisation and errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    make_tokenizer,
    tokenizer_from_dict,
)
from model.errors import ConfigError, DataError

SAMPLE = "def f(x):\n    return x + 1  # add one\n\nprint(f(41))\n"

non_empty_text = st.text(min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), train=non_empty_text)
def test_char_round_trip_over_fitted_alphabet(data: st.DataObject, train: str) -> None:
    tok = CharTokenizer.fit(train)
    text = data.draw(st.text(alphabet=sorted(set(train)), max_size=200))
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1 and ids.shape == (len(text),)
    assert (ids > 0).all() and (ids < tok.vocab_size).all()
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(train)) + 1


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_byte_round_trip_any_text(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text.encode("utf-8")),)
    assert tok.decode(ids) == text
    assert tok.unk_id is None and tok.vocab_size == 256


@settings(max_examples=100, deadline=None)
@given(text=non_empty_text)
def test_word_round_trip_when_fitted_on_same_text(text: str) -> None:
    tok = WordTokenizer.fit(text, max_words=10_000)
    ids = tok.encode(text)
    assert (ids != 0).all()
    assert tok.decode(ids) == text
    assert "".join(WordTokenizer.split(text)) == text


@settings(max_examples=100, deadline=None)
@given(train=st.text(alphabet="abc \n", min_size=1, max_size=50), unseen=st.text(alphabet="xyz!", min_size=1))
def test_unknown_symbols_map_to_unk(train: str, unseen: str) -> None:
    char = CharTokenizer.fit(train)
    assert (char.encode(unseen) == char.unk_id).all() and char.unk_id == 0
    assert char.decode(char.encode(unseen)) == "\ufffd" * len(unseen)
    word = WordTokenizer.fit(train)
    ids = word.encode(unseen)
    assert len(ids) >= 1 and (ids == word.unk_id).all()


def test_word_vocab_is_top_k_by_frequency_with_deterministic_ties() -> None:
    tok = WordTokenizer.fit("b a b c a b d", max_words=3)
    # counts: " " 6, b 3, a 2, c 1, d 1 -> top 3 = " ", b, a
    assert [tok.token_text(i) for i in range(tok.vocab_size)] == ["<unk>", " ", "b", "a"]
    assert tok.encode("c b").tolist() == [0, 1, 2]
    tied = WordTokenizer.fit("z y x", max_words=2)
    assert tied.to_dict()["vocab"] == ["<unk>", " ", "x"]


def test_word_split_keeps_everything() -> None:
    assert WordTokenizer.split("x  = foo(1)\n") == ["x", "  ", "=", " ", "foo", "(", "1", ")", "\n"]


@pytest.mark.parametrize("kind", ["char", "byte", "word"])
def test_dict_round_trip_through_json_preserves_encoding(kind: str) -> None:
    tok = make_tokenizer(kind, SAMPLE, max_words=12)
    d = tok.to_dict()
    assert d["kind"] == kind
    back = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, Tokenizer) and back.kind == kind
    assert back.vocab_size == tok.vocab_size and back.unk_id == tok.unk_id
    probe = SAMPLE + "unseen ✓ symbols €"
    np.testing.assert_array_equal(back.encode(probe), tok.encode(probe))
    assert back.decode(tok.encode(probe)) == tok.decode(tok.encode(probe))
    assert back == tok


@settings(max_examples=50, deadline=None)
@given(train=non_empty_text, probe=st.text(max_size=100))
def test_char_dict_round_trip_property(train: str, probe: str) -> None:
    tok = CharTokenizer.fit(train)
    back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    np.testing.assert_array_equal(back.encode(probe), tok.encode(probe))


def test_token_text() -> None:
    char = CharTokenizer.fit("ab")
    assert [char.token_text(i) for i in range(3)] == ["<unk>", "a", "b"]
    byte = ByteTokenizer()
    assert byte.token_text(65) == "A" and byte.token_text(0xE2) == "<0xE2>"
    with pytest.raises(DataError, match="3"):
        char.token_text(3)


def test_decode_rejects_out_of_range_ids() -> None:
    tok = CharTokenizer.fit("abc")
    with pytest.raises(DataError, match="7"):
        tok.decode([1, 7])
    with pytest.raises(DataError, match="-1"):
        ByteTokenizer().decode(np.array([-1]))
    assert tok.decode([]) == "" and tok.decode(np.array([1, 2], dtype=np.int32)) == "ab"


def test_byte_decode_replaces_invalid_utf8() -> None:
    assert ByteTokenizer().decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


@pytest.mark.parametrize("kind", ["bpe", "", "CHAR"])
def test_make_tokenizer_bad_kind(kind: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(kind))) as err:
        make_tokenizer(kind, SAMPLE)
    assert "char, byte, word" in str(err.value)


def test_from_dict_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="'sentencepiece'"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(ConfigError, match="kind"):
        tokenizer_from_dict({"vocab": ["<unk>", "a"]})
    with pytest.raises(ConfigError, match="list"):
        tokenizer_from_dict(["char"])
    with pytest.raises(ConfigError, match="'extra'"):
        tokenizer_from_dict({"kind": "byte", "extra": 1})
    with pytest.raises(ConfigError, match="vocab"):
        tokenizer_from_dict({"kind": "char", "vocab": ["a", "b"]})
    with pytest.raises(ConfigError, match="'ab'"):
        tokenizer_from_dict({"kind": "char", "vocab": ["<unk>", "ab"]})
    with pytest.raises(ConfigError, match="duplicate"):
        tokenizer_from_dict({"kind": "word", "vocab": ["<unk>", "x", "x"]})


@pytest.mark.parametrize("kind", ["char", "word"])
def test_empty_training_text_is_a_data_error(kind: str) -> None:
    with pytest.raises(DataError, match="empty"):
        make_tokenizer(kind, "")
    assert make_tokenizer("byte", "").vocab_size == 256


def test_bad_max_words() -> None:
    with pytest.raises(ConfigError, match=r"max_words: .* got 0"):
        make_tokenizer("word", SAMPLE, max_words=0)


def test_char_vocabulary_can_be_capped() -> None:
    from model.data.tokenizers import CharTokenizer

    tok = CharTokenizer.fit("aaaabbbccd", max_size=3)  # <unk> + the two most frequent
    assert tok.vocab_size == 3
    assert tok.decode(tok.encode("abcd")) == "ab\ufffd\ufffd"
    assert CharTokenizer.fit("abc", max_size=10).vocab_size == 4
    with pytest.raises(ConfigError, match="max_vocab: must be 0"):
        CharTokenizer.fit("abc", max_size=1)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.integers(0, 50))
def test_word_count_at_most_is_the_capped_count(text: str, limit: int) -> None:
    assert WordTokenizer.count_at_most(text, limit) == min(len(WordTokenizer.split(text)), limit + 1)
