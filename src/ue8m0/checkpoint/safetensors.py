"""A zero-copy safetensors reader: parse the header, ``mmap`` the file, view tensors as numpy.

F8 and E8M0 tensors are returned as ml_dtypes arrays (or raw bytes), with no torch needed.
"""

from __future__ import annotations

import json
import mmap
import struct
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


class SafetensorsFile:
    """An open, validated safetensors file; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self.tensors, self.metadata, self.data_start = _parse(self.path, self._file)
            size = self.path.stat().st_size
            self._mmap = (
                mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            )
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

    def get(self, name: str) -> np.ndarray:
        """A read-only numpy view of tensor ``name`` (no copy)."""
        info = self.tensors[name]
        if info.dtype not in DTYPES:
            raise CheckpointError(self.path, f"unsupported dtype {info.dtype}", name)
        assert self._mmap is not None or info.nbytes == 0
        buf = np.frombuffer(
            self._mmap if self._mmap is not None else b"",
            dtype=np.uint8,
            count=info.nbytes,
            offset=self.data_start + info.start,
        )
        return buf.view(DTYPES[info.dtype]).reshape(info.shape)


def _parse(path: Path, f: Any) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    size = path.stat().st_size
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
                path, f"offsets {start}..{end} run past the end of the data ({data_size} bytes)", name
            )
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values() if t.end > t.start)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise CheckpointError(path, f"data of {name_a!r} and {name_b!r} overlap", name_b)
    return tensors, dict(metadata), 8 + n
