"""Drop-behind: written pieces reach the disk and leave the page cache, ``lag`` bytes behind."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from ue8m0.checkpoint.dropbehind import DropBehind
from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter

WRITE, WAIT_WRITE_WAIT = 2, 7


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, int, int, int]] = []
        self.fail_on = fail_on

    def sync(self, fd: int, offset: int, nbytes: int, flags: int) -> None:
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise OSError(errno.EINVAL, "not supported here")
        self.calls.append(("sync", offset, nbytes, flags))

    def fadvise(self, fd: int, offset: int, nbytes: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        self.calls.append(("drop", offset, nbytes, advice))


def test_each_piece_starts_writeback_and_is_dropped_lag_bytes_later() -> None:
    rec = Recorder()
    db = DropBehind(3, lag=100, sync_file_range=rec.sync, fadvise=rec.fadvise)
    for i in range(5):  # pieces of 40 bytes
        db.written(40 * i, 40)
    # after piece 3 (offsets 0..159), 120 bytes stay queued behind piece 0: it goes
    assert rec.calls == [
        ("sync", 0, 40, WRITE),
        ("sync", 40, 40, WRITE),
        ("sync", 80, 40, WRITE),
        ("sync", 120, 40, WRITE),
        ("sync", 0, 40, WAIT_WRITE_WAIT),
        ("drop", 0, 40, os.POSIX_FADV_DONTNEED),
        ("sync", 160, 40, WRITE),
        ("sync", 40, 40, WAIT_WRITE_WAIT),
        ("drop", 40, 40, os.POSIX_FADV_DONTNEED),
    ]
    db.finish()
    dropped = [c[1:3] for c in rec.calls if c[0] == "drop"]
    # every piece, once, in order; then the whole file (0, 0), for the pages pieces share
    assert dropped == [(0, 40), (40, 40), (80, 40), (120, 40), (160, 40), (0, 0)]
    assert rec.calls[-2] == ("sync", 0, 0, WAIT_WRITE_WAIT)


def test_a_failing_call_turns_it_off_without_an_error() -> None:
    rec = Recorder(fail_on=1)
    db = DropBehind(3, lag=10, sync_file_range=rec.sync, fadvise=rec.fadvise)
    db.written(0, 8)
    db.written(8, 8)  # EINVAL: off from here on
    assert not db.enabled
    db.written(16, 8)
    db.finish()
    assert rec.calls == [("sync", 0, 8, WRITE)]


def _resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore on a mapping that touches nothing)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        return sum(v & 1 for v in vec)


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` lies on (the longest mount point above it)."""
    best, kind = "", ""
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def test_a_written_shard_leaves_the_page_cache(tmp_path: Path) -> None:
    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):  # pragma: no cover - not on this machine
        pytest.skip("tmp is in memory: its pages are the file, nothing can be dropped")
    n = 48 << 20  # bytes of one tensor, written in 4 MiB pieces
    specs = [OutSpec("w", "U8", (n,))]
    data = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    kept = tmp_path / "kept.bin"
    kept.write_bytes(data.tobytes())  # plain writes: the page cache keeps them
    if _resident_pages(kept) == 0:  # pragma: no cover - a filesystem without a page cache
        pytest.fail("the reference file is not cached: this check cannot tell anything here")
    path = tmp_path / "x.safetensors"
    with SafetensorsWriter(path, specs) as out:
        assert out._drop.enabled
        for start in range(0, n, 4 << 20):
            out.write("w", data[start : start + (4 << 20)])
    resident = _resident_pages(path)
    assert resident <= 2, f"{resident} pages still cached"  # pieces share 12 pages here
    assert np.array_equal(np.fromfile(path, np.uint8)[-n:], data)  # and the bytes are right


def test_the_environment_can_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setenv("UE8M0_DROP_BEHIND", "0")
    db = DropBehind(3, lag=1, sync_file_range=rec.sync, fadvise=rec.fadvise)
    db.written(0, 8)
    db.finish()
    assert not db.enabled and rec.calls == []
    monkeypatch.setenv("UE8M0_DROP_BEHIND", "1")
    assert DropBehind(3, lag=1, sync_file_range=rec.sync, fadvise=rec.fadvise).enabled
