"""Tokenizers: text <-> 1-D int64 id arrays, for characters, UTF-8 bytes or words.

Every tokenizer serialises to a small JSON object (``to_dict``, written to ``vocab.json``) that
:func:`tokenizer_from_dict` turns back into an equal tokenizer, so a checkpoint decodes exactly as it was
trained.

* ``char``: id 0 is ``<unk>``; ids 1..V-1 are the sorted unique characters of the training text.
* ``byte``: 256 ids, one per UTF-8 byte; every string round-trips and there is no ``<unk>``.
* ``word``: id 0 is ``<unk>``; ids 1..V-1 are the most frequent tokens of the training text, where a token
  is a run of word characters (``\\w+``), a run of whitespace (``\\s+``) or one other character. The three
  classes cover every character, so ``decode(encode(text)) == text`` whenever every token is known.

``<unk>`` ids decode to U+FFFD (the Unicode replacement character). The interface is
:class:`model.data.tokenizer_base.Tokenizer`; the kinds an imported model carries (``list``: a given token list,
``ids``: no text form) are in :mod:`model.data.vocab_tokenizers`, and :func:`tokenizer_from_dict` reads them too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from model.data.tokenizer_base import REPLACEMENT, UNK, IdArray, Tokenizer
from model.data.vocab_tokenizers import VOCAB_KINDS, IdTokenizer, ListTokenizer, vocab_tokenizer_from_dict
from model.errors import ConfigError, DataError

__all__ = [
    "ALL_KINDS",
    "REPLACEMENT",
    "TOKENIZER_KINDS",
    "UNK",
    "ByteTokenizer",
    "CharTokenizer",
    "IdArray",
    "IdTokenizer",
    "ListTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "make_tokenizer",
    "tokenizer_from_dict",
]

#: Every tokenizer kind ``seqpred train`` fits, by its ``--tokenizer`` name.
TOKENIZER_KINDS = ("char", "byte", "word")
#: Every kind :func:`tokenizer_from_dict` reads: the trained ones and those an imported model carries.
ALL_KINDS = (*TOKENIZER_KINDS, *VOCAB_KINDS)

#: Word tokens: words, whitespace runs, or a single character of any other kind; together they match
#: every character, so concatenating the tokens gives back the text.
_WORD_RE = re.compile(r"\w+|\s+|[^\w\s]")


class CharTokenizer(Tokenizer):
    """One id per character: 0 is ``<unk>``, ``chars[i]`` is id i + 1.

    Encoding is vectorised: the text becomes an array of code points (UTF-32), looked up by binary
    search in the sorted known code points.
    """

    kind: ClassVar[str] = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ConfigError(f"char vocab: every entry must be one character, got {ch!r}")
        if not chars:
            raise ConfigError("char vocab: needs at least one character besides <unk>, got none")
        if len(set(chars)) != len(chars):
            dup = next(ch for ch, n in Counter(chars).items() if n > 1)
            raise ConfigError(f"char vocab: duplicate character {dup!r}")
        self.unk_id = 0
        self._chars = chars
        codes = np.array([ord(ch) for ch in chars], dtype=np.uint32)
        order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[order]
        self._sorted_ids = (order + 1).astype(np.int64)
        self._decode_table = np.concatenate([np.array([ord(REPLACEMENT)], dtype=np.uint32), codes])

    @classmethod
    def fit(cls, text: str, max_size: int = 0) -> CharTokenizer:
        """The tokenizer of the sorted unique characters of ``text``; empty text raises DataError.

        ``max_size`` > 0 keeps only the ``max_size - 1`` most frequent characters (ties by character), so
        the vocabulary including ``<unk>`` has at most ``max_size`` ids; rarer ones become ``<unk>``.
        """
        if not text:
            raise DataError("char tokenizer: training text is empty (0 characters)")
        if max_size < 0 or max_size == 1:
            raise ConfigError(f"max_vocab: must be 0 (all characters) or >= 2, got {max_size}")
        if max_size and len(set(text)) >= max_size:
            counts = Counter(text)
            kept = sorted(counts, key=lambda ch: (-counts[ch], ch))[: max_size - 1]
            return cls(sorted(kept))
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self._chars) + 1

    def encode(self, text: str) -> IdArray:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.searchsorted(self._sorted_codes, codes)
        clipped = np.minimum(pos, len(self._sorted_codes) - 1)
        known = self._sorted_codes[clipped] == codes
        return np.where(known, self._sorted_ids[clipped], 0).astype(np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        codes = self._decode_table[self._as_ids(ids)].astype("<u4")
        return codes.tobytes().decode("utf-32-le", "surrogatepass")

    def token_text(self, token_id: int) -> str:
        i = self._check_id(token_id)
        return UNK if i == 0 else self._chars[i - 1]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": [UNK, *self._chars]}


class ByteTokenizer(Tokenizer):
    """One id per UTF-8 byte (V = 256). Encoding a lone surrogate gives ``?``; decoding invalid UTF-8
    gives U+FFFD, so every ordinary string round-trips and any id sequence decodes."""

    kind: ClassVar[str] = "byte"

    def __init__(self) -> None:
        self.unk_id = None

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> IdArray:
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._as_ids(ids).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """ASCII bytes as their character; bytes >= 0x80 (not text on their own) as ``<0xNN>``."""
        i = self._check_id(token_id)
        return chr(i) if i < 0x80 else f"<0x{i:02X}>"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class WordTokenizer(Tokenizer):
    """One id per word token (see the module docstring): 0 is ``<unk>``, ``words[i]`` is id i + 1."""

    kind: ClassVar[str] = "word"

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w:
                raise ConfigError(f"word vocab: every entry must be a non-empty string, got {w!r}")
        if not words:
            raise ConfigError("word vocab: needs at least one word besides <unk>, got none")
        self.unk_id = 0
        self._words = words
        self._index = {w: i + 1 for i, w in enumerate(words)}
        if len(self._index) != len(words):
            dup = next(w for w, n in Counter(words).items() if n > 1)
            raise ConfigError(f"word vocab: duplicate word {dup!r}")

    @staticmethod
    def split(text: str) -> list[str]:
        """The tokens of ``text``; ``"".join(split(text)) == text``."""
        return _WORD_RE.findall(text)

    @staticmethod
    def count_at_most(text: str, limit: int) -> int:
        """``min(len(split(text)), limit + 1)``, scanning no more of ``text`` than that takes (a cheap length
        check for huge texts)."""
        n = 0
        for _ in _WORD_RE.finditer(text):
            n += 1
            if n > limit:
                break
        return n

    @classmethod
    def fit(cls, text: str, max_words: int = 10000) -> WordTokenizer:
        """``<unk>`` plus the ``max_words`` most frequent tokens of ``text``, most frequent first (ties
        broken by the token string, so the vocabulary is deterministic)."""
        if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words <= 0:
            raise ConfigError(f"max_words: must be a positive integer, got {max_words!r}")
        if not text:
            raise DataError("word tokenizer: training text is empty (0 characters)")
        counts = Counter(cls.split(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([w for w, _ in ranked[:max_words]])

    @property
    def vocab_size(self) -> int:
        return len(self._words) + 1

    def encode(self, text: str) -> IdArray:
        index = self._index
        return np.array([index.get(t, 0) for t in self.split(text)], dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        table = [REPLACEMENT, *self._words]
        return "".join(table[i] for i in self._as_ids(ids).tolist())

    def token_text(self, token_id: int) -> str:
        i = self._check_id(token_id)
        return UNK if i == 0 else self._words[i - 1]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": [UNK, *self._words]}


def _unknown_kind(kind: object, kinds: Sequence[str] = TOKENIZER_KINDS) -> ConfigError:
    return ConfigError(f"tokenizer kind: unknown kind {kind!r}; choose one of {', '.join(kinds)}")


def tokenizer_from_dict(d: Any) -> Tokenizer:
    """The tokenizer that ``to_dict`` described; a malformed dict raises :class:`ConfigError` naming the
    problem (not an object, missing or unknown ``kind``, unknown key, bad ``vocab``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"tokenizer: expected a JSON object, got {type(d).__name__}")
    if "kind" not in d:
        raise ConfigError("tokenizer: missing key 'kind'")
    kind = d["kind"]
    if kind in VOCAB_KINDS:
        return vocab_tokenizer_from_dict(d)
    if kind not in TOKENIZER_KINDS:
        raise _unknown_kind(kind, ALL_KINDS)
    allowed = {"kind"} if kind == "byte" else {"kind", "vocab"}
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ConfigError(f"tokenizer ({kind}): unknown key {unknown[0]!r}")
    if kind == "byte":
        return ByteTokenizer()
    vocab = d.get("vocab")
    if not isinstance(vocab, list) or not vocab or vocab[0] != UNK:
        raise ConfigError(f"tokenizer ({kind}): 'vocab' must be a list starting with {UNK!r}, got {vocab!r:.80}")
    if kind == "char":
        return CharTokenizer(vocab[1:])
    return WordTokenizer(vocab[1:])


def make_tokenizer(kind: str, text: str, max_words: int = 10000, max_chars: int = 0) -> Tokenizer:
    """A tokenizer of ``kind`` fitted on ``text`` (``byte`` needs no fitting and ignores it).

    ``max_words`` bounds the word vocabulary; ``max_chars`` > 0 bounds the char vocabulary (``<unk>`` included).

    Unknown ``kind`` raises :class:`ConfigError` listing the valid kinds; empty ``text`` for ``char`` or
    ``word`` raises :class:`DataError`.
    """
    if kind == "char":
        return CharTokenizer.fit(text, max_chars)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer.fit(text, max_words)
    raise _unknown_kind(kind)
