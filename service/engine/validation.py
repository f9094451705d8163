"""Request validation for the engine: token ids, text, top-k and sampling parameters, checked before anything
changes; every error names the field and the bad value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model.data.tokenizers import ListTokenizer, Tokenizer, WordTokenizer
from model.errors import DataError
from service.engine.requests import GenerateSpec
from service.errors import BadSampling, InvalidArgument, TokenOutOfRange, TooManyTokens, UnknownSymbol
from service.settings import Settings


class RequestChecks:
    """The engine's validation methods (mixed into :class:`~service.engine.core.Engine`, which sets the attributes)."""

    settings: Settings
    tokenizer: Tokenizer
    V: int
    max_top_k: int

    def _check_ids(self, tokens: Sequence[int], name: str) -> np.ndarray:
        n = len(tokens)
        if n > self.settings.max_request_tokens:
            raise TooManyTokens(
                f"{name}: {n} tokens, more than the limit of {self.settings.max_request_tokens} per request"
            )
        arr = np.fromiter(tokens, dtype=np.int64, count=n)
        bad = np.flatnonzero((arr < 0) | (arr >= self.V))
        if bad.size:
            i = int(bad[0])
            raise TokenOutOfRange(f"{name}[{i}]: token id {int(arr[i])} is out of range [0, {self.V})")
        return arr

    def encode_text(self, text: str, name: str = "text") -> np.ndarray:
        """Tokenize ``text``. A symbol outside the vocabulary becomes ``<unk>`` (``--on-unknown unk``, and ``auto``
        for a model with an ``<unk>``: every char and word model), is dropped (``skip``), or raises UnknownSymbol
        naming it and its offset (``error``). A model without ``<unk>`` (byte) has no unknown symbols."""
        tok = self.tokenizer
        if not tok.has_text:
            raise InvalidArgument(
                f"{name}: this model has no vocabulary (imported without --vocab); send token ids in 'tokens' instead"
            )
        limit = self.settings.max_request_tokens
        if len(text) > limit:
            # refuse a huge text before tokenizing all of it (seconds of event-loop time for 16 MiB): char and
            # byte tokenizers give at least one token per character; word and list tokens are counted up to the limit
            if isinstance(tok, WordTokenizer | ListTokenizer):
                if tok.count_at_most(text, limit) > limit:
                    raise TooManyTokens(f"{name}: more than {limit} tokens, the limit per request")
            else:
                raise TooManyTokens(
                    f"{name}: {len(text)} characters, at least {len(text)} tokens, more than the limit of {limit} "
                    "per request"
                )
        try:
            ids = tok.encode(text)
        except DataError as e:  # a list vocabulary without <unk>: the character that starts no token
            raise UnknownSymbol(f"{name}: {str(e).removeprefix('text: ')}") from None
        if len(ids) > limit:
            raise TooManyTokens(f"{name}: {len(ids)} tokens, more than the limit of {limit} per request")
        mode = self.settings.on_unknown
        if tok.unk_id is not None and len(ids) and mode in ("error", "skip"):  # "auto" is "unk": it has an <unk>
            bad = np.flatnonzero(ids == tok.unk_id)
            if bad.size and mode == "skip":
                return np.delete(ids, bad)
            if bad.size and mode == "error":
                i = int(bad[0])
                if isinstance(tok, WordTokenizer | ListTokenizer):
                    pieces = tok.split(text)
                    what = "word" if isinstance(tok, WordTokenizer) else "character"
                    sym, offset = pieces[i], sum(len(p) for p in pieces[:i])
                else:
                    sym, offset, what = text[i], i, "character"
                shown = repr(sym) if len(sym) <= 32 else f"{sym[:32]!r}... ({len(sym)} characters)"
                raise UnknownSymbol(f"{name}: {what} {shown} at offset {offset} is not in the model's vocabulary")
        return ids

    def _inputs(self, tokens: Sequence[int], text: str, name: str = "") -> np.ndarray | int | None:
        """The request's tokens: None, one int (the common single-step case) or an int64 array."""
        if len(tokens) and text:
            raise InvalidArgument(f"{name or 'request'}: set tokens or text, not both")
        if text:
            ids = self.encode_text(text, f"{name}.text" if name else "text")
            if len(ids) == 0:  # every symbol was unknown and skipped (--on-unknown skip): no input
                return None
            return int(ids[0]) if len(ids) == 1 else ids
        if len(tokens) == 1:
            t = tokens[0]
            if not 0 <= t < self.V:
                raise TokenOutOfRange(
                    f"{name + '.' if name else ''}tokens[0]: token id {t} is out of range [0, {self.V})"
                )
            return int(t)
        if len(tokens) == 0:
            return None
        return self._check_ids(tokens, f"{name}.tokens" if name else "tokens")

    def _check_top_k(self, k: int, name: str = "top_k") -> None:
        if k > self.max_top_k:
            raise BadSampling(f"{name}: must be <= {self.max_top_k}, got {k}")

    def _check_generate(self, g: GenerateSpec) -> None:
        limit = self.settings.max_generate_tokens
        if not 1 <= g.max_tokens <= limit:
            raise TooManyTokens(f"generate.max_tokens: must be in [1, {limit}], got {g.max_tokens}")
        if not math.isfinite(g.temperature) or g.temperature < 0:
            raise BadSampling(f"generate.temperature: must be finite and >= 0, got {g.temperature}")
        if not (0 < g.top_p <= 1):  # also rejects NaN
            raise BadSampling(f"generate.top_p: must be in (0, 1], got {g.top_p}")
        if g.top_k > self.V:
            raise BadSampling(f"generate.top_k: must be <= the vocabulary size {self.V}, got {g.top_k}")
