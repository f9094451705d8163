"""``seqpred client`` text escapes: read as bash's ``printf`` reads them (checked against bash itself), and shown
back so that what is shown reads back to the same text."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.client.escapes import shown, unescape

BASH = shutil.which("bash")


def bash_printf(fmt: str) -> str:
    assert BASH is not None
    out = subprocess.run(
        [BASH, "-c", 'printf -- "$1"', "_", fmt],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    ).stdout
    return out.decode("utf-8")


CASES = [
    r"class Point:\n    def __init__(self",
    r"a\tb\\c\"d\'e",
    r"\x41B\101\0z",
    r"\u41\u00e9\U1F600",
    r"\e[0m\E \a\b\f\v\r",
    r"keep \q \c \x and \u alone",
    r"\400\1234\0",
    "no escapes at all",
]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@pytest.mark.parametrize("text", CASES)
def test_unescape_reads_what_printf_reads(text: str) -> None:
    assert unescape(text) == bash_printf(text)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="\\ntx41u0\"'aqz é", max_size=12))
def test_unescape_agrees_with_printf_on_any_mix(text: str) -> None:
    # octal and \x escapes built from 0, 1, 4 stay below 0x80, where printf's raw bytes and our characters agree
    assert unescape(text) == bash_printf(text)


def test_codes_are_characters_not_bytes() -> None:
    assert unescape(r"caf\xe9 \351") == "café é"
    assert unescape(r"\ud800") == r"\ud800"  # a surrogate is not a character: kept as typed


@given(st.text())
def test_shown_reads_back(text: str) -> None:
    assert unescape(shown(text)) == text


def test_shown_escapes_once() -> None:
    assert shown("\n") == r"\n"
    assert shown("\\") == "\\\\"
    assert shown(" 'x'\t\x01é\u2028") == r" 'x'\t\x01é\u2028"
    assert shown("plain") == "plain"
