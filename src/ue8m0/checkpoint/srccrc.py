"""The CRC-32 of a source shard, computed from the bytes a conversion actually read.

A conversion reads (almost) every byte of its source shard once, with ``pread``, in pieces and
not in file order. :class:`HashingFile` is the reader with a CRC-32 taken of each piece as it
arrives (zlib, ~3 GB/s, no second read); :meth:`HashingFile.file_crc` combines them into the
CRC of the whole file (``crc32_combine``, as the writer does for its output). What no step read
(the header, a dropped scale read from elsewhere, a tensor read twice in overlapping pieces) is
read once more at the end to fill the gaps; the header is read right after the file is opened.

So the CRC the resume manifest records for a shard is that of the bytes its output was made
from: a source changed in place between two runs is caught on resume by its CRC, never by its
size alone (:mod:`.manifest`). Scales read from *another* shard are recorded by tensor
(:meth:`HashingFile.tensor_crcs`): the output depends on those bytes too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.jsonio import load_json
from ue8m0.checkpoint.plan import ShardPlan
from ue8m0.checkpoint.rawio import open_regular, pread_exact
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.writer import crc32_combine, write_json_atomic
from ue8m0.errors import CheckpointError

#: bytes read at a time to fill a gap, or to checksum a whole file
CHUNK = 1 << 24
#: where each converted shard's source record waits for the manifest (hidden, in DST)
SOURCES_DIR = ".ue8m0-sources"


class HashingFile(SafetensorsFile):
    """A :class:`SafetensorsFile` that keeps the CRC-32 of every piece of data it reads."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        try:
            #: the file's stat when it was opened (size and mtime: resume's cheap pre-check)
            self.opened_stat = os.fstat(self._file.fileno())
            header = pread_exact(self._file.fileno(), 0, self.data_start, self.path)
        except BaseException:
            self.close()
            raise
        #: (offset, length, crc32) of every piece read, the header first
        self.pieces: list[tuple[int, int, int]] = [(0, len(header), zlib.crc32(header))]
        #: tensor name -> crc32 of its whole data, for the tensors read whole
        self.whole: dict[str, int] = {}

    def _pread(self, offset: int, size: int, name: str) -> np.ndarray:
        out = super()._pread(offset, size, name)
        crc = zlib.crc32(memoryview(out))  # type: ignore[arg-type]
        self.pieces.append((offset, size, crc))
        info = self.tensors.get(name)
        if info is not None and offset == self.data_start + info.start and size == info.nbytes:
            self.whole[name] = crc
        return out

    def tensor_crcs(self) -> dict[str, str]:
        """``{tensor: crc32}`` of the tensors read whole (a scale from another shard)."""
        return {name: f"{crc:08x}" for name, crc in sorted(self.whole.items())}

    def file_crc(self) -> str:
        """CRC-32 of the whole file (8 hex digits): the pieces read, combined, and the gaps
        between them read now."""
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        crc, cursor = 0, 0
        for offset, length, piece_crc in sorted(self.pieces):
            end = offset + length
            if end <= cursor:
                continue  # read twice: counted once
            if offset > cursor:
                crc = self._extend(crc, fd, cursor, offset)
                cursor = offset
            if offset == cursor:
                crc = crc32_combine(crc, piece_crc, length)
            else:  # a partial overlap: read the part not yet counted
                crc = self._extend(crc, fd, cursor, end)
            cursor = end
        return f"{self._extend(crc, fd, cursor, size):08x}"

    def _extend(self, crc: int, fd: int, start: int, stop: int) -> int:
        for lo in range(start, stop, CHUNK):
            crc = zlib.crc32(pread_exact(fd, lo, min(CHUNK, stop - lo), self.path), crc)
        return crc


def file_crc(path: Path) -> str:
    """CRC-32 of the regular file at ``path``, read from start to end."""
    fd = open_regular(path)
    try:
        crc, size = 0, os.fstat(fd).st_size
        for lo in range(0, size, CHUNK):
            crc = zlib.crc32(pread_exact(fd, lo, min(CHUNK, size - lo), path), crc)
    finally:
        os.close(fd)
    return f"{crc:08x}"


def tasks_digest(shard: ShardPlan) -> str:
    """A digest of what the plan does in ``shard`` (every task, output and reason): a finished
    shard is skipped on resume only if the plan for it is still the same."""
    return hashlib.sha256(repr((shard.name, shard.tasks)).encode("utf-8")).hexdigest()[:16]


def _sidecar(dst_root: Path, shard: str) -> Path:
    return dst_root / SOURCES_DIR / (shard.replace("/", "__") + ".json")


def write_source_record(
    dst_root: Path, shard: ShardPlan, src: HashingFile, others: Mapping[str, SafetensorsFile]
) -> None:
    """What output ``shard`` was made from: its source's size, mtime and CRC-32 (of the bytes
    read), the CRC-32 of each scale read from another shard, and the plan's digest. Written next
    to the output (``DST/.ue8m0-sources/``), where any process, or a Ray node, can leave it; the
    runner moves it into the manifest when it records the shard (:meth:`.Manifest.record`)."""
    st = src.opened_stat
    record = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "crc32": src.file_crc(),
        "deps": {
            name: f.tensor_crcs() if isinstance(f, HashingFile) else {"?": "unknown"}
            for name, f in sorted(others.items())
        },
        "tasks": tasks_digest(shard),
    }
    path = _sidecar(dst_root, shard.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def take_source_record(dst_root: Path, shard: str) -> dict[str, Any] | None:
    """The record :func:`write_source_record` left for ``shard`` (None when there is none or it
    is unreadable: the shard is then redone on resume, never skipped)."""
    path = _sidecar(dst_root, shard)
    try:
        record = load_json(path, "a source record")
    except CheckpointError:
        return None
    return record if isinstance(record, dict) else None


def drop_source_records(dst_root: Path) -> None:
    """Remove the records once the manifest holds them (the run is complete)."""
    shutil.rmtree(dst_root / SOURCES_DIR, ignore_errors=True)


def source_unchanged(src_root: Path, record: object, shard: ShardPlan) -> bool:
    """True when the source of ``shard`` still holds the bytes ``record`` says its output was
    made from: same plan, then size and mtime (a cheap pre-check: any difference means redo),
    then the CRC-32 of the whole file and of every scale read from another shard (the
    decision)."""
    if not isinstance(record, dict) or record.get("tasks") != tasks_digest(shard):
        return False
    path = src_root / shard.name
    try:
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) != (record.get("size"), record.get("mtime_ns")):
            return False
        if file_crc(path) != record.get("crc32"):
            return False
        deps = record.get("deps")
        if not isinstance(deps, dict):
            return False
        for other, tensors in deps.items():
            if not isinstance(tensors, dict) or _tensor_crcs(src_root / other, tensors) != tensors:
                return False
    except (OSError, CheckpointError):
        return False
    return True


def _tensor_crcs(path: Path, names: dict[str, Any]) -> dict[str, str]:
    with SafetensorsFile(path) as f:
        return {n: f"{zlib.crc32(memoryview(f.read(n))):08x}" for n in names if n in f.tensors}  # type: ignore[arg-type]
