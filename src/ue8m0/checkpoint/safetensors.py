"""A zero-copy safetensors reader: parse and validate the header, ``mmap`` or ``pread`` the data.

F8 and E8M0 tensors are returned as ml_dtypes arrays (or raw bytes), with no torch needed.
:meth:`SafetensorsFile.get` returns a view of a memory map (zero copy, for inspection);
:meth:`SafetensorsFile.read_rows` copies a slab of rows with ``pread`` so that converting a
checkpoint touches no more memory than the slab (mapped pages would count in the RSS).
"""

from __future__ import annotations

import itertools
import json
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

MAX_HEADER = 100 * 1024 * 1024


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
    with open(path, "rb") as f:
        return _parse(path, f)


class SafetensorsFile:
    """An open, validated safetensors file; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")
        self._mmap: mmap.mmap | None = None
        try:
            self.tensors, self.metadata, self.data_start = _parse(self.path, self._file)
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
        """A read-only numpy view of tensor ``name`` (no copy)."""
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
        """Like :meth:`read_rows` but zero-copy: a read-only view of a private mapping of just
        those rows (prefaulted), unmapped on exit so the RSS never holds more than the slab."""
        info = self.info(name)
        rows, cols = info.shape[-2], info.shape[-1]
        row_bytes = cols * info.itemsize
        offset = self.data_start + info.start + (lead * rows + r0) * row_bytes
        size = (r1 - r0) * row_bytes
        if size == 0:
            yield np.zeros((r1 - r0, cols), DTYPES[info.dtype])
            return
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(
            self._file.fileno(), offset + size - base, flags=flags, prot=mmap.PROT_READ, offset=base
        )
        arr: np.ndarray | None = None
        try:
            view = np.frombuffer(mapped, np.uint8, count=size, offset=offset - base)
            arr = view.view(DTYPES[info.dtype]).reshape(r1 - r0, cols)
            del view
            yield arr
        finally:
            del arr  # drop the export before closing the map
            try:
                mapped.close()
            except BufferError:  # the caller kept a view; the GC unmaps it later
                pass

    def read_bytes(self, name: str, start: int, stop: int) -> np.ndarray:
        """Bytes ``start:stop`` of the data of tensor ``name`` as a uint8 copy."""
        info = self.info(name)
        return self._pread(self.data_start + info.start + start, stop - start, name)

    def _pread(self, offset: int, size: int, name: str) -> np.ndarray:
        out = np.empty(size, np.uint8)
        view = memoryview(out)  # type: ignore[arg-type]
        done = 0
        fd = self._file.fileno()
        while done < size:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(self.path, "truncated while reading", name)
            done += n
        return out


def _parse(path: Path, f: Any) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    size = os.fstat(f.fileno()).st_size
    raw = f.read(8)
    if len(raw) < 8:
        raise CheckpointError(path, "truncated: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER or 8 + n > size:
        raise CheckpointError(path, f"header length {n} is larger than the file ({size} bytes)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not a JSON object")
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(path, "malformed header entry", name) from None
        if dtype not in DTYPES:
            raise CheckpointError(path, f"unknown dtype {dtype!r}", name)
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if any(d < 0 for d in shape) or start < 0 or end < start or end - start != expected:
            raise CheckpointError(path, f"offsets {start}..{end} do not fit shape {shape}", name)
        if end > data_size:
            raise CheckpointError(
                path,
                f"offsets {start}..{end} run past the end of the data ({data_size} bytes): "
                "truncated file?",
                name,
            )
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values() if t.end > t.start)
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise CheckpointError(path, f"data of {name_a!r} and {name_b!r} overlap", name_b)
    return tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + n
