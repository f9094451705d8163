"""The tokenizer interface every kind implements: text <-> 1-D int64 id arrays, and a JSON description.

Kinds live in :mod:`model.data.tokenizers` (char, byte, word) and :mod:`model.data.vocab_tokenizers` (a given
token list, or ids only); :func:`model.data.tokenizers.tokenizer_from_dict` turns any ``to_dict`` back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from model.errors import DataError

IdArray = NDArray[np.int64]

UNK = "<unk>"
REPLACEMENT = "\ufffd"


class Tokenizer(ABC):
    """Maps text to token ids and back.

    Attributes:
        kind: ``"char"``, ``"byte"``, ``"word"``, ``"list"`` or ``"ids"``.
        unk_id: the id unseen symbols are encoded as, or None when every input is representable.
        has_text: False for a model that has no vocabulary (``"ids"``): :meth:`encode` refuses text, and only
            token ids can be fed.
    """

    kind: ClassVar[str]
    has_text: ClassVar[bool] = True
    unk_id: int | None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """V: ids are 0..V-1."""

    @abstractmethod
    def encode(self, text: str) -> IdArray:
        """The ids of ``text``, a 1-D int64 array; unseen symbols become :attr:`unk_id`."""

    @abstractmethod
    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of ``ids``; an id outside 0..V-1 raises :class:`DataError`."""

    @abstractmethod
    def token_text(self, token_id: int) -> str:
        """A readable rendering of one token, for showing predictions (``<unk>`` for the unknown id)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, with ``"kind"``; :func:`tokenizer_from_dict` inverts it."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    def _check_id(self, token_id: int) -> int:
        if isinstance(token_id, bool) or not isinstance(token_id, int | np.integer):
            raise DataError(f"token id: expected an integer, got {token_id!r}")
        if not 0 <= int(token_id) < self.vocab_size:
            raise DataError(f"token id: {int(token_id)} is out of range [0, {self.vocab_size})")
        return int(token_id)

    def _as_ids(self, ids: Iterable[int] | np.ndarray) -> IdArray:
        """``ids`` as a validated 1-D int64 array."""
        arr = ids if isinstance(ids, np.ndarray) else np.array(list(ids))
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1:
            raise DataError(f"ids: expected a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise DataError(f"ids: expected integer token ids, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise DataError(f"ids: token id {bad} is out of range [0, {self.vocab_size})")
        return arr.astype(np.int64, copy=False)
