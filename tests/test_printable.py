"""printable(): no character of a name can drive the terminal; distinct names stay distinct."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ue8m0.cli.errors import format_error
from ue8m0.errors import CheckpointError
from ue8m0.printable import printable

# what a terminal acts on: C0, DEL, C1, line/paragraph separators, bidi controls
DANGEROUS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

CASES = [
    ("newline", "a\nb", "a\\x0ab"),
    ("carriage return", "ok\rue8m0: all checks passed", "ok\\x0due8m0: all checks passed"),
    ("tab", "a\tb", "a\\x09b"),
    ("ESC colour", "\x1b[31mred", "\\x1b[31mred"),
    ("OSC title", "\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    ("DEL", "a\x7f", "a\\x7f"),
    ("C1 CSI", "a\x9b2J", "a\\x9b2J"),
    ("NEL", "a\x85b", "a\\x85b"),
    ("line separator", "a\u2028b", "a\\u2028b"),
    ("paragraph separator", "a\u2029b", "a\\u2029b"),
    ("RLO", "evil\u202egpj.exe", "evil\\u202egpj.exe"),
    ("LRI", "a\u2066b\u2069", "a\\u2066b\\u2069"),
    ("zero-width joiner", "a\u200db", "a\\u200db"),
    ("lone surrogate", "caf\udce9", "caf\\udce9"),
    ("backslash", "a\\x0ab", "a\\\\x0ab"),
    ("non-BMP control", "a\U000e0001", "a\\U000e0001"),
    ("plain", "model.layers.0.mlp.experts.7.w1.weight", "model.layers.0.mlp.experts.7.w1.weight"),
    ("letters", "café/日本語/Ελληνικά/😀", "café/日本語/Ελληνικά/😀"),
    ("space", "a b", "a b"),
]


@pytest.mark.parametrize(("label", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_named_cases(label: str, text: str, expected: str) -> None:
    assert printable(text) == expected


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _unescape(text: str) -> str:
    """The slow inverse of printable(): every backslash starts an escape (oracle)."""

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        return "\\" if body == "\\" else chr(int(body[1:], 16))

    assert "\\" not in _ESCAPE.sub("", text), "a backslash that starts no escape"
    return _ESCAPE.sub(one, text)


@given(st.text())
def test_output_is_printable_and_decodes_back(text: str) -> None:
    out = printable(text)
    assert out.isprintable()
    assert not DANGEROUS.search(out)
    assert _unescape(out) == text  # injective: distinct names never print the same


@given(st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))))
def test_printable_text_is_unchanged(text: str) -> None:
    text = "".join(c for c in text if c != "\\" and (c == " " or c.isprintable()))
    assert printable(text) == text


@given(st.text(), st.text())
def test_distinct_inputs_stay_distinct(a: str, b: str) -> None:
    assert (printable(a) == printable(b)) == (a == b)


def test_every_escaped_character_is_one_python_refuses_to_print() -> None:
    for code in range(0x3000):
        char = chr(code)
        if unicodedata.category(char) == "Cs":
            assert printable(char) == f"\\u{code:04x}"
            continue
        assert (printable(char) == char) == (char.isprintable() and char != "\\")


def test_error_messages_are_one_printable_line() -> None:
    exc = CheckpointError("dir\n/x.safetensors", "bad", "w\nue8m0: all checks passed\x1b]0;t\x07")
    message = format_error(exc)
    assert message is not None
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message
    assert message == (
        "dir\\x0a/x.safetensors: tensor 'w\\\\nue8m0: all checks passed\\\\x1b]0;t\\\\x07': bad"
    )
