r"""Backslash escapes for text on a command line: :func:`unescape` reads them the way ``printf`` does, :func:`shown`
writes a token's text back the same way (so ``"\n"`` typed and a newline shown look alike).

Escapes read, as bash's ``printf`` reads its format: ``\\``, ``\"``, ``\'``, ``\a``, ``\b``, ``\e`` (and ``\E``),
``\f``, ``\n``, ``\r``, ``\t``, ``\v``, ``\NNN`` (1-3 octal digits), ``\xHH`` (1-2 hex digits), ``\uHHHH`` (1-4)
and ``\UHHHHHHHH`` (1-8). A backslash before anything else (or before a code point that is not a character, such as
a surrogate) stays as it is. One difference: ``\xHH`` and ``\NNN`` give the *character* with that code (``\xe9``
is ``é``), where ``printf`` writes a raw byte.
"""

from __future__ import annotations

import re

__all__ = ["shown", "unescape"]

_SIMPLE = {
    "\\": "\\",
    '"': '"',
    "a": "\a",
    "'": "'",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_ESCAPE = re.compile(
    r"""\\(?:(?P<simple>[\\"'abeEfnrtv])|(?P<oct>[0-7]{1,3})|x(?P<hex>[0-9a-fA-F]{1,2})"""
    r"""|u(?P<u4>[0-9a-fA-F]{1,4})|U(?P<u8>[0-9a-fA-F]{1,8}))"""
)
_SHOWN = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _one(m: re.Match[str]) -> str:
    if m["simple"] is not None:
        return _SIMPLE[m["simple"]]
    code = int(m["oct"], 8) & 0xFF if m["oct"] is not None else int(m["hex"] or m["u4"] or m["u8"], 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return m[0]
    return chr(code)


def unescape(text: str) -> str:
    r"""``text`` with its ``printf``-style backslash escapes replaced (``a\nb``: ``a``, a newline, ``b``)."""
    return _ESCAPE.sub(_one, text) if "\\" in text else text


def shown(text: str) -> str:
    r"""``text`` for a terminal: backslash, newline, tab and carriage return as ``\\``, ``\n``, ``\t``, ``\r``,
    other unprintable characters as ``\xHH``, ``\uHHHH`` or ``\UHHHHHHHH``, everything else as it is (so
    :func:`unescape` reads it back)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        if c in _SHOWN:
            out.append(_SHOWN[c])
        elif c.isprintable():
            out.append(c)
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)
