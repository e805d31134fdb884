"""A zero-copy safetensors reader: parse and validate the header, ``mmap`` or ``pread`` the data.

F8 and E8M0 tensors are returned as ml_dtypes arrays (or raw bytes), with no torch needed.
:meth:`SafetensorsFile.get` returns a view of a memory map (zero copy, for inspection);
:meth:`SafetensorsFile.read_rows` copies a slab of rows with ``pread`` so that converting a
checkpoint touches no more memory than the slab (mapped pages would count in the RSS).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.checkpoint.jsonio import loads_json
from ue8m0.checkpoint.rawio import open_regular, pread_exact, pread_into
from ue8m0.errors import CheckpointError

#: safetensors dtype tag -> numpy dtype
DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

#: numpy dtype -> safetensors dtype tag
TAGS: dict[np.dtype[Any], str] = {dtype: tag for tag, dtype in DTYPES.items()}

#: float dtypes a checkpoint stores high-precision weights in
FLOAT_TAGS = ("F32", "F16", "BF16")
#: FP8 element dtypes of quantized weights
FP8_TAGS = ("F8_E4M3", "F8_E5M2")

#: dtype tags the safetensors format defines that ue8m0 does not read
OTHER_TAGS = ("F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64")

#: the safetensors library's limit on the header length
MAX_HEADER = 100_000_000
#: sizes (shape dims, offsets) are unsigned 64-bit integers in the format
_SIZE_LIMIT = 2**64


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize


def tag_of(dtype: Any) -> str:
    """The safetensors tag of a numpy dtype."""
    try:
        return TAGS[np.dtype(dtype)]
    except KeyError:
        raise CheckpointError("<memory>", f"no safetensors dtype for {np.dtype(dtype)}") from None


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of ``path``: ``(tensors, metadata, data_start)``."""
    path = Path(path)
    fd = open_regular(path)
    try:
        return _parse(path, fd)
    finally:
        os.close(fd)


class SafetensorsFile:
    """An open, validated safetensors file; use as a context manager.

    Data is read with ``pread`` (:meth:`read`, :meth:`read_rows`, :meth:`map_rows`,
    :meth:`read_bytes`): a file truncated while it is read gives a ``CheckpointError``. Only
    :meth:`get` maps the file (zero copy, for inspection): touching such a view after the file
    was truncated kills the process with ``SIGBUS``, so converters never use it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(open_regular(self.path), "rb", buffering=0)
        self._mmap: mmap.mmap | None = None
        try:
            self.tensors, self.metadata, self.data_start = _parse(self.path, self._file.fileno())
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the map and the file."""
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # a view is still alive; the GC will release it
                pass
        self._file.close()

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        """The header entry of ``name``."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(self.path, "no such tensor in this file", name) from None

    def get(self, name: str) -> np.ndarray:
        """A read-only numpy view of tensor ``name`` (no copy; see the class doc on SIGBUS)."""
        info = self.info(name)
        if info.nbytes == 0:
            return np.zeros(info.shape, DTYPES[info.dtype])
        if self._mmap is None:
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        buf = np.frombuffer(
            self._mmap, dtype=np.uint8, count=info.nbytes, offset=self.data_start + info.start
        )
        return buf.view(DTYPES[info.dtype]).reshape(info.shape)

    def read(self, name: str) -> np.ndarray:
        """A private copy of tensor ``name`` (read with ``pread``)."""
        info = self.info(name)
        raw = self._pread(self.data_start + info.start, info.nbytes, name)
        return raw.view(DTYPES[info.dtype]).reshape(info.shape)

    def read_rows(self, name: str, lead: int, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of the 2-D slice ``lead`` (index over the leading dims) as a copy.

        The tensor is seen as ``(prod(leading dims), rows, cols)``; a 2-D tensor has ``lead=0``.
        """
        info = self.info(name)
        rows, cols = info.shape[-2], info.shape[-1]
        row_bytes = cols * info.itemsize
        offset = self.data_start + info.start + (lead * rows + r0) * row_bytes
        raw = self._pread(offset, (r1 - r0) * row_bytes, name)
        return raw.view(DTYPES[info.dtype]).reshape(r1 - r0, cols)

    @contextmanager
    def map_rows(self, name: str, lead: int, r0: int, r1: int) -> Iterator[np.ndarray]:
        """Rows ``r0:r1`` of the 2-D slice ``lead`` for the duration of the ``with`` block.

        Read with ``pread`` into a slab that lives only as long as the block (a memory map
        would die of ``SIGBUS`` if the source were truncated meanwhile; measured, the copy
        costs no throughput), so the RSS never holds more than the slab.
        """
        arr = self.read_rows(name, lead, r0, r1)
        arr.flags.writeable = False  # read-only as a map was: the kernels' warm-up signature
        yield arr

    def read_bytes(self, name: str, start: int, stop: int) -> np.ndarray:
        """Bytes ``start:stop`` of the data of tensor ``name`` as a uint8 copy."""
        info = self.info(name)
        return self._pread(self.data_start + info.start + start, stop - start, name)

    def _pread(self, offset: int, size: int, name: str) -> np.ndarray:
        out = np.empty(size, np.uint8)
        pread_into(self._file.fileno(), memoryview(out), offset, self.path, name)  # type: ignore[arg-type]
        return out


def _parse(path: Path, fd: int) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """The header of the open file ``fd``, validated as the safetensors library does.

    Refused (each a one-line ``CheckpointError``): a header length beyond the file or above
    :data:`MAX_HEADER`; a header that is not UTF-8, not a JSON object, nested too deep or with a
    key twice; metadata that is not an object of strings; an entry whose dtype is unknown, whose
    shape or offsets are not unsigned 64-bit integers (``true``, ``2.0``, ``-1``), whose byte
    span does not equal ``prod(shape) * itemsize`` (Python integers: no overflow) or runs past
    the data; spans that, sorted, leave a hole or overlap; bytes after the last span.
    """
    size = os.fstat(fd).st_size
    if size < 8:
        raise CheckpointError(path, "truncated: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", pread_exact(fd, 0, 8, path))
    if n > MAX_HEADER:
        raise CheckpointError(path, f"header length {n} is over the limit of {MAX_HEADER}")
    if 8 + n > size:
        raise CheckpointError(path, f"header length {n} is larger than the file ({size} bytes)")
    header = loads_json(pread_exact(fd, 8, n, path), path, "header", allow_nan=False)
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = _metadata(path, header.pop("__metadata__", None))
    data_size = size - 8 - n
    tensors = {name: _entry(path, name, entry, data_size) for name, entry in header.items()}
    _check_coverage(path, tensors, data_size)
    return tensors, metadata, 8 + n


def _metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not a JSON object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(
                path, f"__metadata__ value of {_short(key)} is {_short(value)}, not a string"
            )
    return metadata


def _is_size(value: object) -> bool:
    return type(value) is int and 0 <= value < _SIZE_LIMIT


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _span_of(shape: list[int], itemsize: int, cap: int) -> int:
    """``prod(shape) * itemsize`` in Python integers, stopped once it passes ``cap`` (a
    hostile shape of millions of dims must not build a million-digit integer)."""
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
        if total > cap:
            return total
    return total


def _entry(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(path, "malformed header entry (not a JSON object)", name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(path, f"malformed header entry: dtype {_short(dtype)}", name)
    if dtype not in DTYPES:
        kind = "unsupported" if dtype in OTHER_TAGS else "unknown"
        raise CheckpointError(path, f"{kind} dtype {_short(dtype)}", name)
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise CheckpointError(
            path, f"shape {_short(shape)} is not a list of unsigned 64-bit integers", name
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o) for o in offsets):
        raise CheckpointError(
            path, f"data_offsets {_short(offsets)} are not two unsigned 64-bit integers", name
        )
    start, end = offsets
    expected = _span_of(shape, DTYPES[dtype].itemsize, _SIZE_LIMIT)
    if end < start or end - start != expected:
        what = "more than 2**64" if expected >= _SIZE_LIMIT else str(expected)
        raise CheckpointError(
            path,
            f"offsets {start}..{end} do not fit shape {_short(tuple(shape))} of {dtype} "
            f"({what} bytes)",
            name,
        )
    if end > data_size:
        raise CheckpointError(
            path,
            f"offsets {start}..{end} run past the end of the data ({data_size} bytes): "
            "truncated file?",
            name,
        )
    return TensorInfo(name, dtype, tuple(shape), start, end)


def _check_coverage(path: Path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    """The spans, sorted, must tile the data exactly (what the safetensors library checks)."""
    cursor, previous = 0, ""
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start < cursor:
            raise CheckpointError(
                path,
                f"data overlaps that of {previous!r} (bytes {info.start}..{cursor})",
                info.name,
            )
        if info.start > cursor:
            raise CheckpointError(
                path, f"a hole of {info.start - cursor} bytes before the data", info.name
            )
        cursor, previous = info.end, info.name
    if cursor != data_size:
        raise CheckpointError(
            path,
            f"{data_size - cursor} trailing bytes after the last tensor's data "
            "(the safetensors library refuses such a file)",
        )
