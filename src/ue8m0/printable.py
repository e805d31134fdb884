"""Names and paths made safe to print: no character of theirs can move the cursor, start a new
line, recolour or retitle the terminal, or reorder the text around it.

A tensor name or a file name comes from the checkpoint, so it may hold a newline (forging a
line such as ``ue8m0: all checks passed``), an ESC or OSC sequence, or a bidi override. Every
character :meth:`str.isprintable` refuses is shown as an escape: C0 and C1 controls, DEL, ESC,
newline, tab, U+2028/U+2029, the bidi controls U+202A..U+202E and U+2066..U+2069, zero-width
and other format characters, spaces other than U+0020, unpaired surrogates (undecodable bytes
of a file name) and unassigned code points. Letters of any script are left alone.

The escapes are those of Python string literals: ``\\xNN`` below U+0100, ``\\uNNNN`` below
U+10000, ``\\UNNNNNNNN`` above, and the backslash itself is doubled (``\\\\``). Every backslash of
the output therefore starts an escape whose letter says how long it is, so the output decodes
back to the input: two different names never print the same.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character and the backslash escaped (see the module)."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)
