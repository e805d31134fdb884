"""Streaming safetensors writer and atomic file helpers.

The header is written first (every output's name, dtype and shape is known from the plan),
then each tensor's bytes as they are produced, in header order, possibly in several pieces.
Files are written under a temporary name in the destination directory and renamed when
complete, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.dropbehind import DropBehind
from ue8m0.checkpoint.rawio import open_regular
from ue8m0.checkpoint.safetensors import DTYPES
from ue8m0.errors import CheckpointError

TMP_SUFFIX = ".ue8m0-tmp"
#: writes in flight per file (each holds one slab's output)
WRITE_BEHIND = 2


@dataclass(frozen=True)
class OutSpec:
    """One tensor of an output file."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename: hidden, unique to this
    call (``.NAME.<pid>-<random>.ue8m0-tmp``), so no two writers (two runs, two processes)
    ever share one, and one run's cleanup of ``*.ue8m0-tmp`` never takes another's file
    unnoticed (runs hold the destination's lock: :mod:`.dstlock`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def layout_header(specs: list[OutSpec], metadata: dict[str, str] | None) -> bytes:
    """The header bytes (length prefix included), padded with spaces to 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for spec in specs:
        end = offset + spec.nbytes
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class SafetensorsWriter:
    """Writes one safetensors file as a stream; use as a context manager.

    The header goes first; ``write(name, array)`` then appends the next piece of tensor
    ``name``'s bytes at that tensor's cursor (``pwrite``), so a tensor may be produced in
    pieces and the scales of a weight may land before it in the file. On a clean exit every
    tensor must be complete: the file is renamed into place and ``checksum``/``size`` describe
    it. On an exception the temporary file is removed.
    """

    def __init__(
        self, path: str | Path, specs: list[OutSpec], metadata: dict[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise CheckpointError(self.path, "duplicate tensor names in output")
        header = layout_header(list(specs), metadata)
        self._offset: dict[str, int] = {}
        offset = len(header)
        for spec in specs:
            self._offset[spec.name] = offset
            offset += spec.nbytes
        self._cursor = dict.fromkeys(self.specs, 0)
        self.size = offset
        self.checksum = ""
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._drop = DropBehind(self._fd)  # the file's pages leave the cache as they reach disk
        self._crcs: list[tuple[int, int, int]] = []  # (offset, length, crc32) of each piece
        # write-behind: pwrite releases the GIL, so the next slab is computed meanwhile
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ue8m0-writer")
        self._pending: deque[Future[None]] = deque()
        try:
            self._pwrite(memoryview(header), 0)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    def _pwrite(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            try:
                done += os.pwrite(self._fd, data[done:], offset + done)
            except OSError as exc:  # ENOSPC, EFBIG, EIO: a write names no file; name ours
                raise OSError(exc.errno, exc.strerror, str(self.tmp)) from None
        # checksummed from our buffer, so the file never has to be read back
        self._crcs.append((offset, len(data), zlib.crc32(data)))
        self._drop.written(offset, len(data))

    def write(self, name: str, array: np.ndarray) -> None:
        """Append bytes (C order) to tensor ``name``."""
        spec = self.specs.get(name)
        if spec is None:
            raise CheckpointError(self.path, "not in the output header", name)
        data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        cursor = self._cursor[name]
        if cursor + len(data) > spec.nbytes:
            raise CheckpointError(self.path, "more bytes written than the header says", name)
        while len(self._pending) >= WRITE_BEHIND:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._pwrite, data, self._offset[name] + cursor))
        self._cursor[name] = cursor + len(data)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
            if exc_type is None:
                self._drop.finish()
        finally:
            self._pool.shutdown()
            os.close(self._fd)
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        for name, spec in self.specs.items():
            if self._cursor[name] != spec.nbytes:
                self.tmp.unlink(missing_ok=True)
                raise CheckpointError(
                    self.path, f"incomplete: {self._cursor[name]} of {spec.nbytes} bytes", name
                )
        self.checksum = _file_crc_from_pieces(self._crcs, self.size)
        os.replace(self.tmp, self.path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and a rename (the
    temporary file is removed when anything fails, an interrupt included)."""
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a regular file's bytes (not its links) to ``dst`` via a temporary file and a rename.

    The source is opened with :func:`.rawio.open_regular`: a FIFO or device swapped in after the
    checkpoint was opened is refused instead of blocking the copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    try:
        with open(open_regular(src), "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def _zero_byte_operators(count: int = 64) -> list[list[int]]:
    """``ops[k]`` advances a CRC-32 register over ``2**k`` zero bytes (a 32x32 GF(2) matrix)."""
    op = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit (reflected polynomial)
    for _ in range(3):  # 2, 4, 8 zero bits
        op = _gf2_square(op)
    ops = [op]
    for _ in range(count - 1):
        ops.append(_gf2_square(ops[-1]))
    return ops


_ZERO_OPS = _zero_byte_operators()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``, as zlib's
    ``crc32_combine`` does: ``crc1`` advanced over ``len2`` zero bytes, XOR ``crc2``."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_ZERO_OPS[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def _file_crc_from_pieces(pieces: list[tuple[int, int, int]], size: int) -> str:
    """The file's CRC-32 from the CRCs of pieces that cover it exactly once."""
    crc, end = 0, 0
    for offset, length, piece_crc in sorted(pieces):
        if offset != end:
            raise AssertionError(f"pieces leave a gap or overlap at byte {end}")
        crc = crc32_combine(crc, piece_crc, length)
        end += length
    if end != size:
        raise AssertionError(f"pieces cover {end} of {size} bytes")
    return f"{crc:08x}"


def file_checksum(path: Path, chunk: int = 1 << 24) -> str:
    """CRC-32 of a file's bytes as 8 hex digits (zlib's; 2-3x faster than sha256 here, and it
    only has to catch torn or corrupted shards, not an adversary)."""
    crc = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"
