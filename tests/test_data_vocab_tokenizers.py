"""The tokenizers of imported models: ``list`` (a given token list, greedy longest match) and ``ids`` (no text)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.tokenizers import IdTokenizer, ListTokenizer, tokenizer_from_dict
from model.errors import ConfigError, DataError

TOKENS = ["<unk>", "a", "b", "ab", "abc", " ", "\n"]


def test_list_tokens_split_longest_first_and_round_trip() -> None:
    tok = ListTokenizer(TOKENS)
    assert tok.vocab_size == 7 and tok.unk_id == 0
    assert tok.split("abcab a\n") == ["abc", "ab", " ", "a", "\n"]
    ids = tok.encode("abcab a\n")
    assert ids.dtype == np.int64 and ids.tolist() == [4, 3, 5, 1, 6]
    assert tok.decode(ids) == "abcab a\n"
    assert tok.encode("abx").tolist() == [3, 0]  # an unknown character becomes <unk>
    assert tok.token_text(4) == "abc"
    assert tokenizer_from_dict(tok.to_dict()) == tok


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab \n", max_size=60))
def test_list_round_trip_over_its_alphabet(text: str) -> None:
    tok = ListTokenizer(TOKENS)
    assert tok.decode(tok.encode(text)) == text
    assert tok.count_at_most(text, 5) == min(len(tok.split(text)), 6)


def test_a_list_without_unk_names_the_unknown_character() -> None:
    tok = ListTokenizer(["x", "yz"])
    assert tok.unk_id is None
    with pytest.raises(DataError, match=r"^text: character 'y' at offset 1 starts no token of the vocabulary"):
        tok.encode("xyx")


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([], "list vocab: needs at least one token, got none"),
        (["a", ""], "list vocab: entry 1 must be a non-empty string, got ''"),
        (["a", 3], "list vocab: entry 1 must be a non-empty string, got 3"),
        (["a", "b", "a"], "list vocab: duplicate token 'a'"),
    ],
)
def test_bad_lists(tokens: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        ListTokenizer(tokens)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_ids_tokenizer_has_no_text() -> None:
    tok = IdTokenizer(5)
    assert not tok.has_text and tok.vocab_size == 5 and tok.unk_id is None
    assert tok.token_text(3) == "<3>" and tok.decode([1, 4]) == "<1><4>"
    with pytest.raises(DataError) as e:
        tok.encode("a")
    assert str(e.value) == (
        "text: this model has no vocabulary (imported without --vocab); send token ids instead of text"
    )
    assert tokenizer_from_dict({"kind": "ids", "vocab_size": 5}) == tok
    with pytest.raises(DataError):
        tok.token_text(5)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "ids", "vocab_size": 0}, "ids vocab: vocab_size must be a positive integer, got 0"),
        ({"kind": "ids"}, "ids vocab: vocab_size must be a positive integer, got None"),
        ({"kind": "ids", "vocab_size": 3, "x": 1}, "tokenizer (ids): unknown key 'x'"),
        ({"kind": "list", "vocab": "abc"}, "tokenizer (list): 'vocab' must be a list of token strings, got 'abc'"),
        ({"kind": "nope"}, "tokenizer kind: unknown kind 'nope'; choose one of char, byte, word, list, ids"),
    ],
)
def test_bad_descriptions(d: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        tokenizer_from_dict(d)
    assert str(e.value) == message
