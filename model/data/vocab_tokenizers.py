"""Tokenizers of imported models: a given token list (``list``), or none at all (``ids``).

* ``list``: the vocabulary is a list of token strings, index = id (``seqpred import --vocab tokens.json``).
  Text is split greedily, longest token first, at every position; a character that starts no token becomes
  the ``<unk>`` id when the list holds ``"<unk>"``, else :meth:`ListTokenizer.encode` raises
  :class:`DataError` naming it and its offset. ``decode`` joins the tokens.
* ``ids``: a model imported without a vocabulary: ``V`` ids and no text form. :meth:`IdTokenizer.encode`
  refuses text (the model is fed token ids), and token ``i`` reads ``<i>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from model.data.tokenizer_base import UNK, IdArray, Tokenizer
from model.errors import ConfigError, DataError

#: The kinds defined here, by their ``to_dict`` name.
VOCAB_KINDS = ("list", "ids")


class ListTokenizer(Tokenizer):
    """Token ``tokens[i]`` is id i; text splits greedily into the longest tokens (see the module docstring)."""

    kind: ClassVar[str] = "list"

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        for i, t in enumerate(tokens):
            if not isinstance(t, str) or not t:
                raise ConfigError(f"list vocab: entry {i} must be a non-empty string, got {t!r:.40}")
        if not tokens:
            raise ConfigError("list vocab: needs at least one token, got none")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise ConfigError(f"list vocab: duplicate token {dup!r:.40}")
        self._tokens = tokens
        self._index = {t: i for i, t in enumerate(tokens)}
        self._longest = max(len(t) for t in tokens)
        self.unk_id = self._index.get(UNK)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def split(self, text: str, limit: int | None = None) -> list[str]:
        """The pieces ``text`` encodes as: the longest known token at each position, else one character (an
        unknown one); ``"".join(split(text)) == text``. ``limit``: stop after that many pieces."""
        pieces: list[str] = []
        index, pos, n = self._index, 0, len(text)
        while pos < n and (limit is None or len(pieces) < limit):
            for size in range(min(self._longest, n - pos), 0, -1):
                if text[pos : pos + size] in index:
                    break
            pieces.append(text[pos : pos + size])  # size 1 when nothing matched: an unknown character
            pos += size
        return pieces

    def count_at_most(self, text: str, limit: int) -> int:
        """``min(len(split(text)), limit + 1)``, splitting no more of ``text`` than that takes (a cheap length
        check for huge texts)."""
        return len(self.split(text, limit + 1))

    def encode(self, text: str) -> IdArray:
        ids: list[int] = []
        offset = 0
        for piece in self.split(text):
            i = self._index.get(piece)
            if i is None:
                if self.unk_id is None:
                    raise DataError(
                        f"text: character {piece!r} at offset {offset} starts no token of the vocabulary "
                        f"(it has no {UNK!r} entry)"
                    )
                i = self.unk_id
            ids.append(i)
            offset += len(piece)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        tokens = self._tokens
        return "".join(tokens[i] for i in self._as_ids(ids).tolist())

    def token_text(self, token_id: int) -> str:
        return self._tokens[self._check_id(token_id)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self._tokens)}


class IdTokenizer(Tokenizer):
    """``V`` token ids without a text form (a model imported without ``--vocab``)."""

    kind: ClassVar[str] = "ids"
    has_text: ClassVar[bool] = False

    def __init__(self, vocab_size: int) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ConfigError(f"ids vocab: vocab_size must be a positive integer, got {vocab_size!r}")
        self._size = vocab_size
        self.unk_id = None

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> IdArray:
        raise DataError("text: this model has no vocabulary (imported without --vocab); send token ids instead of text")

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return "".join(f"<{i}>" for i in self._as_ids(ids).tolist())

    def token_text(self, token_id: int) -> str:
        return f"<{self._check_id(token_id)}>"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self._size}


def vocab_tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """The ``list`` or ``ids`` tokenizer ``d`` describes (``d["kind"]`` is one of :data:`VOCAB_KINDS`)."""
    kind = d["kind"]
    allowed = {"kind", "vocab"} if kind == "list" else {"kind", "vocab_size"}
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ConfigError(f"tokenizer ({kind}): unknown key {unknown[0]!r}")
    if kind == "ids":
        return IdTokenizer(d.get("vocab_size"))  # type: ignore[arg-type]  # checked by IdTokenizer
    vocab = d.get("vocab")
    if not isinstance(vocab, list):
        raise ConfigError(f"tokenizer (list): 'vocab' must be a list of token strings, got {vocab!r:.80}")
    return ListTokenizer(vocab)
