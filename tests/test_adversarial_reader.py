"""Hostile and unlucky safetensors files: each a one-line CheckpointError naming the file and
the reason (in the library and through ``ue8m0 inspect``: one line on stderr, exit 2, no
traceback), never a hang, a signal death, an overflow or a 0-byte tensor.

The ``safetensors`` library is the oracle of strictness: every file refused here is refused by
it too (except a key given twice, which it silently takes the last of), and every file it reads
we read the same.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_fixtures import save
from ue8m0.checkpoint.jsonio import json_depth, load_json, loads_json
from ue8m0.checkpoint.safetensors import SafetensorsFile, open_regular, read_header
from ue8m0.cli.errors import exit_code_for, format_error
from ue8m0.errors import CheckpointError

safetensors = pytest.importorskip("safetensors")


def _raw(path: Path, header: Any, data: bytes = b"") -> Path:
    """A file with ``header`` (an object, or the exact header bytes) and ``data``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _e(shape: Any, offsets: Any, dtype: Any = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _library_refuses(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception:
        return True
    return False


DUP = b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'

#: (id, header, data, the message after "PATH: ")
REFUSED: list[tuple[str, Any, bytes, str]] = [
    (
        "trailing bytes",
        {"a": _e([2, 2], [0, 16])},
        bytes(20),
        "4 trailing bytes after the last tensor's data (the safetensors library refuses such "
        "a file)",
    ),
    (
        "trailing bytes, no tensors",
        {},
        b"junk",
        "4 trailing bytes after the last tensor's data (the safetensors library refuses such "
        "a file)",
    ),
    (
        "float offsets",
        {"a": _e([2, 2], [0.0, 16.0])},
        bytes(16),
        "tensor 'a': data_offsets [0.0, 16.0] are not two unsigned 64-bit integers",
    ),
    (
        "three offsets",
        {"a": _e([2, 2], [0, 16, 16])},
        bytes(16),
        "tensor 'a': data_offsets [0, 16, 16] are not two unsigned 64-bit integers",
    ),
    (
        "true in shape",
        {"a": _e([True, 4], [0, 16])},
        bytes(16),
        "tensor 'a': shape [True, 4] is not a list of unsigned 64-bit integers",
    ),
    (
        "float in shape",
        {"a": _e([2.0, 2], [0, 16])},
        bytes(16),
        "tensor 'a': shape [2.0, 2] is not a list of unsigned 64-bit integers",
    ),
    (
        "negative shape",
        {"a": _e([-2, -2], [0, 16])},
        bytes(16),
        "tensor 'a': shape [-2, -2] is not a list of unsigned 64-bit integers",
    ),
    (
        "string in shape",
        {"a": _e(["2", 2], [0, 16])},
        bytes(16),
        "tensor 'a': shape ['2', 2] is not a list of unsigned 64-bit integers",
    ),
    (
        "shape product overflows 64 bits",
        {"a": _e([2**32, 2**32, 2**31], [0, 0])},
        b"",
        "tensor 'a': offsets 0..0 do not fit shape (4294967296, 4294967296, 2147483648) of F32 "
        "(more than 2**64 bytes)",
    ),
    (
        "shape product wraps to 0 in int64",
        {"a": _e([2**62, 4], [0, 0])},
        b"",
        "tensor 'a': offsets 0..0 do not fit shape (4611686018427387904, 4) of F32 "
        "(more than 2**64 bytes)",
    ),
    (
        "dim of 2**70",
        {"a": _e([2**70], [0, 0])},
        b"",
        "tensor 'a': shape [1180591620717411303424] is not a list of unsigned 64-bit integers",
    ),
    (
        "offsets of 2**64",
        {"a": _e([2, 2], [2**64, 2**64 + 16])},
        bytes(16),
        "tensor 'a': data_offsets [18446744073709551616, 18446744073709551632] are not two "
        "unsigned 64-bit integers",
    ),
    (
        "metadata value not a string",
        {"__metadata__": {"format": 1}, "a": _e([2, 2], [0, 16])},
        bytes(16),
        "__metadata__ value of 'format' is 1, not a string",
    ),
    (
        "metadata a list",
        {"__metadata__": [], "a": _e([2, 2], [0, 16])},
        bytes(16),
        "__metadata__ is not a JSON object",
    ),
    (
        "overlap",
        {"a": _e([2, 2], [0, 16]), "b": _e([2, 2], [8, 24])},
        bytes(24),
        "tensor 'b': data overlaps that of 'a' (bytes 8..16)",
    ),
    (
        "hole",
        {"a": _e([2, 2], [0, 16]), "b": _e([2, 2], [20, 36])},
        bytes(36),
        "tensor 'b': a hole of 4 bytes before the data",
    ),
    (
        "hole at the start",
        {"a": _e([2, 2], [4, 20])},
        bytes(20),
        "tensor 'a': a hole of 4 bytes before the data",
    ),
    (
        "empty tensor off the tiling",
        {"a": _e([0, 4], [5, 5])},
        bytes(8),
        "tensor 'a': a hole of 5 bytes before the data",
    ),
    (
        "offsets backwards",
        {"a": _e([2, 2], [16, 0])},
        bytes(16),
        "tensor 'a': offsets 16..0 do not fit shape (2, 2) of F32 (16 bytes)",
    ),
    (
        "past the end",
        {"a": _e([2, 2], [0, 16])},
        bytes(8),
        "tensor 'a': offsets 0..16 run past the end of the data (8 bytes): truncated file?",
    ),
    (
        "unknown dtype",
        {"a": _e([2], [0, 1], "F4_E9")},
        bytes(1),
        "tensor 'a': unknown dtype 'F4_E9'",
    ),
    (
        "dtype lower case",
        {"a": _e([4], [0, 16], "f32")},
        bytes(16),
        "tensor 'a': unknown dtype 'f32'",
    ),
    (
        "dtype the format has, ue8m0 does not read",
        {"a": _e([2], [0, 16], "C64")},
        bytes(16),
        "tensor 'a': unsupported dtype 'C64'",
    ),
    (
        "dtype not a string",
        {"a": _e([4], [0, 16], 7)},
        bytes(16),
        "tensor 'a': malformed header entry: dtype 7",
    ),
    (
        "entry not an object",
        {"a": [1, 2]},
        b"",
        "tensor 'a': malformed header entry (not a JSON object)",
    ),
    ("header a JSON array", [1, 2], b"", "header is not a JSON object"),
    ("header not UTF-8", b'{"\xff": 1}', b"", "header is not UTF-8 (invalid start byte at byte 2)"),
    (
        "header not JSON",
        b"{nope",
        b"",
        "header is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1))",
    ),
    (
        "header NaN",
        b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,NaN]}}',
        bytes(16),
        "header holds NaN, which JSON does not allow",
    ),
    (
        "header nested 10000 deep",
        b'{"__metadata__":' + b"[" * 10000 + b"]" * 10000 + b"}",
        b"",
        "header is nested 10001 levels deep (at most 64)",
    ),
    (
        "integer of 5000 digits",
        b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,16]}}',
        bytes(16),
        "header holds an integer of more than 4300 digits",
    ),
    ("duplicate key", DUP, bytes(16), "header has the key 'a' twice"),
]
#: refused here, read by the library (it keeps the last of two equal keys; it knows complex
#: and sub-byte dtypes no ue8m0 path converts)
STRICTER = {"duplicate key", "dtype the format has, ue8m0 does not read"}


@pytest.mark.parametrize(
    ("label", "header", "data", "reason"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_reader_refuses(tmp_path: Path, label: str, header: Any, data: bytes, reason: str) -> None:
    path = _raw(tmp_path / "x.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: {reason}"
    with pytest.raises(CheckpointError, match="^" + str(path)):
        SafetensorsFile(path)
    assert _library_refuses(path) == (label not in STRICTER)


def test_header_length_beyond_the_file_or_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: header length 1000000 is larger than the file (10 bytes)"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    assert str(info.value) == (
        f"{path}: header length 9223372036854775808 is over the limit of 100000000"
    )
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="shorter than the 8-byte header length"):
        read_header(path)
    assert _library_refuses(path)


ACCEPTED: list[tuple[str, Any, bytes]] = [
    (
        "offsets out of header order",
        {"a": _e([2, 2], [16, 32]), "b": _e([2, 2], [0, 16])},
        bytes(32),
    ),
    (
        "empty tensors",
        {"a": _e([0, 4], [0, 0]), "b": _e([2], [0, 8]), "c": _e([3, 0], [8, 8])},
        bytes(8),
    ),
    ("metadata null", {"__metadata__": None, "a": _e([2], [0, 8])}, bytes(8)),
    (
        "metadata strings",
        {"__metadata__": {"format": "pt", "x": ""}, "a": _e([2], [0, 8])},
        bytes(8),
    ),
    ("unknown entry fields", {"a": {**_e([2], [0, 8]), "extra": [1, {"b": None}]}}, bytes(8)),
    ("no tensors", {}, b""),
    (
        "header padded with spaces",
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}   ',
        b"\x07",
    ),
]


@pytest.mark.parametrize(("label", "header", "data"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_reader_reads_what_the_library_reads(
    tmp_path: Path, label: str, header: Any, data: bytes
) -> None:
    from safetensors.numpy import load_file

    path = _raw(tmp_path / "x.safetensors", header, data)
    ours = {}
    with SafetensorsFile(path) as f:
        for name in f.keys():
            ours[name] = f.read(name)
        metadata = f.metadata
    theirs = load_file(str(path))
    assert sorted(ours) == sorted(theirs)
    for name, arr in theirs.items():
        assert ours[name].shape == arr.shape and ours[name].tobytes() == arr.tobytes()
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        assert metadata == (f.metadata() or {})


_SIZES = st.one_of(
    st.integers(0, 40),
    st.sampled_from([True, False, -1, 2.0, 2**64, 2**63, "3", None]),
)


@st.composite
def _headers(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    header: dict[str, Any] = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.one_of(
                st.none(),
                st.dictionaries(
                    st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()), max_size=2
                ),
            )
        )
    for i in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(_SIZES, max_size=3))
        offsets = draw(st.lists(_SIZES, min_size=1, max_size=3))
        dtype = draw(st.sampled_from(["F32", "BF16", "U8", "I64", "F8_E4M3", "F4_E9"]))
        header[f"t{i}"] = _e(shape, offsets, dtype)
    return header, draw(st.integers(0, 80))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_headers())
def test_random_headers_accepted_exactly_when_the_library_accepts(
    tmp_path: Path, case: tuple[dict[str, Any], int]
) -> None:
    header, data_size = case
    path = _raw(tmp_path / "r.safetensors", header, bytes(data_size))
    try:
        read_header(path)
        ours = True
    except CheckpointError:
        ours = False
    assert ours == (not _library_refuses(path)), header


# ------------------------------------------------------------------ through the CLI


def _inspect(target: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UE8M0_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", "inspect", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ue8m0: error: "), result.stderr
    return lines[0].removeprefix("ue8m0: error: ")


CLI_CASES = [c for c in REFUSED if c[0] not in {"integer of 5000 digits"}]


@pytest.mark.parametrize(
    ("label", "header", "data", "reason"), CLI_CASES, ids=[c[0] for c in CLI_CASES]
)
def test_inspect_prints_one_line_and_exits_2(
    tmp_path: Path, label: str, header: Any, data: bytes, reason: str
) -> None:
    path = _raw(tmp_path / "x.safetensors", header, data)
    assert _one_line_error(_inspect(path)) == f"{path}: {reason}"


def test_a_name_cannot_forge_a_line(tmp_path: Path) -> None:
    """A tensor name with a newline and an OSC sequence prints escaped on the one error line."""
    name = "w\nue8m0: all checks passed\x1b]0;pwned\x07"
    path = _raw(tmp_path / "x.safetensors", {name: _e([2, 2], [0, 16], "F4_E9")}, bytes(16))
    message = _one_line_error(_inspect(path))
    assert "\x1b" not in message and "\x07" not in message
    assert message.endswith("unknown dtype 'F4_E9'")


# ------------------------------------------------------------------ regular files only


def test_fifo_shard_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    os.mkfifo(root / "model.safetensors")
    assert _one_line_error(_inspect(root)) == (
        f"{root / 'model.safetensors'}: not a regular file (a FIFO): refused"
    )


def test_directory_shard_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "model.safetensors").mkdir(parents=True)
    assert _one_line_error(_inspect(root)) == (
        f"{root / 'model.safetensors'}: not a regular file (a directory): refused"
    )


def test_open_regular_refuses_devices_dirs_fifos_and_missing_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # O_NONBLOCK: cannot block even if the stat check were gone
    for path, kind in (
        ("/dev/null", "a character device"),
        (tmp_path, "a directory"),
        (tmp_path / "fifo", "a FIFO"),
    ):
        with pytest.raises(CheckpointError) as info:
            open_regular(path)
        assert str(info.value) == f"{path}: not a regular file ({kind}): refused"
    with pytest.raises(CheckpointError) as info:
        open_regular(tmp_path / "missing")
    assert str(info.value) == f"{tmp_path / 'missing'}: no such file or directory"
    os.symlink(tmp_path / "fifo", tmp_path / "link")
    with pytest.raises(CheckpointError, match="a FIFO"):
        open_regular(tmp_path / "link")


def test_fifo_swapped_in_after_the_stat_is_refused(tmp_path: Path) -> None:
    """The check on the open descriptor: ``os.stat`` is made to lie (a regular file's result)
    while the path is a FIFO; the open must return at once and be refused. A subprocess, so a
    blocking open fails this test by its timeout instead of hanging pytest."""
    (tmp_path / "regular").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    script = textwrap.dedent(
        f"""
        import os
        from ue8m0.checkpoint import safetensors
        from ue8m0.errors import CheckpointError
        real_stat = os.stat
        safetensors.os.stat = lambda p, *a, **k: real_stat({str(tmp_path / "regular")!r})
        try:
            safetensors.open_regular({str(tmp_path / "fifo")!r})
        except CheckpointError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path / 'fifo'}: not a regular file (a FIFO): refused"


# ------------------------------------------------------------------ SIGBUS


def test_source_truncated_while_open_is_an_error_not_a_signal(tmp_path: Path) -> None:
    """Every converter read path of a file truncated under an open SafetensorsFile ends in a
    CheckpointError (run in a subprocess: a SIGBUS would kill it, not pytest)."""
    path = tmp_path / "big.safetensors"
    save(path, {"w": np.ones((1024, 1024), np.float32)})
    script = textwrap.dedent(
        f"""
        import os
        from ue8m0.checkpoint.safetensors import SafetensorsFile
        from ue8m0.errors import CheckpointError
        path = {str(path)!r}
        with SafetensorsFile(path) as f:
            os.truncate(path, f.data_start + 1000)
            reads = {{
                "map_rows": lambda: f.map_rows("w", 0, 512, 640).__enter__().sum(),
                "read_rows": lambda: f.read_rows("w", 0, 512, 640),
                "read_bytes": lambda: f.read_bytes("w", 2**21, 2**21 + 4096),
                "read": lambda: f.read("w"),
            }}
            for what, read in reads.items():
                try:
                    read()
                    print(what, "read a truncated file")
                except CheckpointError as exc:
                    print(what, exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (result.returncode, result.stderr)  # -7 would be SIGBUS
    lines = result.stdout.splitlines()
    expected = f"{path}: tensor 'w': truncated while reading (it changed under us?)"
    assert lines == [
        f"{what} {expected}" for what in ("map_rows", "read_rows", "read_bytes", "read")
    ]


def test_source_truncated_inside_map_rows_does_not_kill(tmp_path: Path) -> None:
    """The slab of ``map_rows`` is the reader's own memory: truncating the file while the block
    runs changes nothing in it (a memory map would die of SIGBUS here: exit -7)."""
    path = tmp_path / "big.safetensors"
    save(path, {"w": np.ones((1024, 1024), np.float32)})
    script = textwrap.dedent(
        f"""
        import os
        from ue8m0.checkpoint.safetensors import SafetensorsFile
        path = {str(path)!r}
        with SafetensorsFile(path) as f:
            with f.map_rows("w", 0, 512, 640) as x:
                os.truncate(path, f.data_start + 1000)
                print(x.sum())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.strip() == str(128.0 * 1024)


def test_map_rows_gives_the_rows(tmp_path: Path) -> None:
    w = np.arange(6 * 5 * 7, dtype=np.float32).reshape(6, 5, 7)
    save(tmp_path / "a.safetensors", {"w": w})
    with SafetensorsFile(tmp_path / "a.safetensors") as f:
        for lead in range(6):
            with f.map_rows("w", lead, 1, 4) as x:
                assert np.array_equal(x, w[lead, 1:4])
                assert x.dtype == np.float32
            assert np.array_equal(f.read_rows("w", lead, 0, 5), w[lead])


# ------------------------------------------------------------------ jsonio


def test_load_json_refusals(tmp_path: Path) -> None:
    cases = {
        "deep.json": (
            b"[" * 100_000 + b"]" * 100_000,
            "config.json is nested 100000 levels deep (at most 64)",
        ),
        "latin1.json": (
            b'{"a": "caf\xe9"}',
            "config.json is not UTF-8 (invalid continuation byte at byte 10)",
        ),
        "dup.json": (b'{"a": 1, "b": {"c": 1, "c": 2}}', "config.json has the key 'c' twice"),
        "bad.json": (
            b'{"a": }',
            "config.json is not valid JSON (Expecting value: line 1 column 7 (char 6))",
        ),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_json(tmp_path / name, "config.json")
        assert str(info.value) == f"{tmp_path / name}: {reason}"
    (tmp_path / "big.json").write_bytes(b"[" + b"1," * 100 + b"1]")
    with pytest.raises(CheckpointError) as info:
        load_json(tmp_path / "big.json", "the index", max_bytes=100)
    assert (
        str(info.value) == f"{tmp_path / 'big.json'}: the index is 203 bytes (at most 100 are read)"
    )
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_json(tmp_path / "fifo.json", "the manifest")


def test_load_json_reads_valid_json(tmp_path: Path) -> None:
    value = {"a": [1, 2.5, None, True, {"b": "é\n"}], "n": float("nan")}
    (tmp_path / "ok.json").write_text(json.dumps(value), encoding="utf-8")
    got = load_json(tmp_path / "ok.json", "config.json")
    assert got["a"] == value["a"] and got["n"] != got["n"]
    with pytest.raises(CheckpointError, match="holds NaN"):
        load_json(tmp_path / "ok.json", "config.json", allow_nan=False)
    nested = b"[" * 64 + b"]" * 64
    assert loads_json(nested, "p", "x") is not None
    with pytest.raises(CheckpointError, match="65 levels"):
        loads_json(b"[" + nested + b"]", "p", "x")


def _depth_oracle(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth_oracle(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth_oracle(v) for v in value), default=0)
    return 0


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet='[]{}"\\ab\n\x00é')),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\a'), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(_JSON, st.booleans())
def test_json_depth_matches_a_recursive_oracle(value: Any, ascii_only: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert json_depth(data) == _depth_oracle(value)


# ------------------------------------------------------------------ the error table


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/x.tmp"),
            "/d/x.tmp: no space left on device",
        ),
        (
            OSError(errno.EFBIG, "File too large", "/d/x"),
            "/d/x: file too large for the file system",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "no space left on device",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/d/x"), "/d/x: disk quota exceeded"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/out"), "/f/out: not a directory"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), "/d: is a directory"),
        (
            FileExistsError(errno.EEXIST, "File exists", "/d/a", None, "/d/b"),
            "/d/a -> /d/b: already exists",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file", "/d/\x1b]0;t\x07"),
            "/d/\\x1b]0;t\\x07: no such file or directory",
        ),
    ],
    ids=[
        "ENOSPC",
        "EFBIG",
        "ENOSPC without path",
        "EDQUOT",
        "ENOTDIR",
        "EISDIR",
        "EEXIST rename",
        "escaped",
    ],
)
def test_os_errors_are_one_line_exit_2(exc: OSError, message: str) -> None:
    assert format_error(exc) == message
    assert exit_code_for(exc) == 2


def test_real_enospc_through_the_cli(tmp_path: Path) -> None:
    """ENOSPC raised where it really happens (a write to /dev/full) reaches the table. A
    ``write`` error carries no file name: the writer must add it (see its own tests)."""
    script = textwrap.dedent(
        """
        import sys
        import click
        from ue8m0.cli import main as m
        @click.command()
        def fill() -> None:
            with open("/dev/full", "wb", buffering=0) as f:
                f.write(b"x")
        m.LazyGroup.get_command = lambda self, ctx, name: fill
        m.main(["fill"])
        """
    )
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == "ue8m0: error: no space left on device"
