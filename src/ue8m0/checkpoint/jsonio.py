"""Bounded JSON loading: every problem is a one-line :class:`CheckpointError`, never a traceback.

``json.loads`` alone recurses once per nesting level (deep input ends in ``RecursionError``),
takes the last of two equal keys, reads ``NaN`` and refuses integers of more than 4300 digits
with a bare ``ValueError``. :func:`loads_json` bounds the nesting depth *before* parsing (the
brackets outside string literals are counted, in numpy), refuses duplicate keys and maps every
failure to ``CheckpointError(path, reason)``; :func:`load_json` also bounds the file's size and
opens regular files only (a FIFO never blocks it).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.rawio import open_regular, pread_exact
from ue8m0.errors import CheckpointError

#: nesting a checkpoint's JSON may have (a safetensors header needs 3, an index 3, a config ~5;
#: the safetensors library itself stops at 128)
MAX_DEPTH = 64
#: the largest JSON file :func:`load_json` reads (an index of a 1T-parameter model is ~10 MB)
MAX_BYTES = 100_000_000

# a JSON string literal (escapes included), written as an unrolled loop: linear time
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``data`` outside string literals.

    Exact for valid JSON; for invalid JSON it may over-count (an unterminated string), which
    only makes a refusal say "too deep" instead of "not valid JSON".
    """
    outside = np.frombuffer(_STRING.sub(b'""', data), np.uint8)
    brackets = outside[np.isin(outside, np.concatenate([_OPEN, _CLOSE]))]
    if brackets.size == 0:
        return 0
    steps = np.where(np.isin(brackets, _OPEN), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Constant(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def loads_json(
    data: bytes,
    path: object,
    what: str,
    *,
    max_depth: int = MAX_DEPTH,
    allow_nan: bool = True,
) -> Any:
    """Parse ``data`` (UTF-8 JSON) that came from ``path``; ``what`` names it in errors.

    Refused, each as ``CheckpointError(path, reason)``: bytes that are not UTF-8, nesting
    deeper than ``max_depth``, invalid JSON (integers of more than 4300 digits included), a key
    twice in one object and, unless ``allow_nan``, ``NaN``/``Infinity``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            path, f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    depth = json_depth(data)
    if depth > max_depth:
        raise CheckpointError(path, f"{what} is nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=None if allow_nan else _refuse_constant,
        )
    except _DuplicateKey as exc:
        raise CheckpointError(path, f"{what} has the key {exc.key!r} twice") from None
    except _Constant as exc:
        raise CheckpointError(path, f"{what} holds {exc}, which JSON does not allow") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"{what} is not valid JSON ({exc})") from None
    except ValueError:  # the only other: an integer longer than Python converts
        digits = sys.get_int_max_str_digits()
        raise CheckpointError(
            path, f"{what} holds an integer of more than {digits} digits"
        ) from None


def load_json(
    path: str | Path,
    what: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    allow_nan: bool = True,
) -> Any:
    """Read and parse the JSON file ``path`` (a regular file of at most ``max_bytes``).

    Every failure is a ``CheckpointError(path, reason)`` naming ``what``: not a regular file,
    unreadable, too large, or any refusal of :func:`loads_json`.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise CheckpointError(path, f"{what} is {size} bytes (at most {max_bytes} are read)")
        data = pread_exact(fd, 0, size, path, what)
    finally:
        os.close(fd)
    return loads_json(data, path, what, max_depth=max_depth, allow_nan=allow_nan)
