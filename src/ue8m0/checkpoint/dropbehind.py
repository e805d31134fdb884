"""Drop-behind: keep a streamed output file out of the page cache (Linux).

Each piece written is handed to the disk at once (``sync_file_range(SYNC_FILE_RANGE_WRITE)``).
Once ``lag`` bytes of later pieces have been written, the piece's writeback is awaited and its
pages are dropped (``posix_fadvise(POSIX_FADV_DONTNEED)``), so one output file never holds more
than about ``lag`` bytes of page cache, and the pages it frees are the ones its next pieces get.

Why a converter wants this: it writes about as much as it reads. Left in the cache, a 700 GB
output would evict everything else (the source included), and the kernel would throttle the
writer on dirty pages anyway. And allocating fresh page-cache pages can cost more than the disk:
on this project's VM, writing 1.25 GB with plain ``pwrite`` after the machine sat idle for a few
seconds took 4.0 s, nearly all of it system time, against 0.6–0.75 s with drop-behind and 0.8 s
with ``O_DIRECT`` (docs/benchmarks.md).

Where the calls do not exist (not Linux) or fail (a filesystem without writeback), it turns
itself off and the file is written as before; on tmpfs both calls succeed and do nothing.
``UE8M0_DROP_BEHIND=0`` turns it off: a small output on a slow disk then finishes as soon as
it is in the page cache, instead of when it is on the disk.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from collections.abc import Callable

#: bytes of written pieces one file keeps in the page cache before waiting and dropping
LAG = 64 * 1024 * 1024
#: ``0`` turns drop-behind off
ENV = "UE8M0_DROP_BEHIND"

_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_* from <fcntl.h>

SyncFileRange = Callable[[int, int, int, int], None]


def _libc_sync_file_range() -> SyncFileRange | None:
    if not sys.platform.startswith("linux"):  # pragma: no cover - other systems
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - a libc without it
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int

    def call(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if fn(fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


_SYNC_FILE_RANGE = _libc_sync_file_range()
_FADVISE: Callable[[int, int, int, int], None] | None = getattr(os, "posix_fadvise", None)


class DropBehind:
    """Drop-behind for one file descriptor open for writing; call :meth:`written` after each
    ``pwrite`` and :meth:`finish` before closing. Not thread-safe: one writer thread."""

    def __init__(
        self,
        fd: int,
        lag: int = LAG,
        sync_file_range: SyncFileRange | None = _SYNC_FILE_RANGE,
        fadvise: Callable[[int, int, int, int], None] | None = _FADVISE,
    ) -> None:
        self.fd = fd
        self.lag = lag
        self._sync = sync_file_range
        self._fadvise = fadvise
        self.enabled = (
            sync_file_range is not None
            and fadvise is not None
            and os.environ.get(ENV, "").strip() != "0"
        )
        self._queue: deque[tuple[int, int]] = deque()
        self._queued = 0

    def written(self, offset: int, nbytes: int) -> None:
        """``nbytes`` at ``offset`` were just written: start their writeback, and wait for and
        drop the oldest pieces while the rest still add up to ``lag`` bytes."""
        if not self.enabled or nbytes == 0:
            return
        try:
            assert self._sync is not None
            self._sync(self.fd, offset, nbytes, _WRITE)
            self._queue.append((offset, nbytes))
            self._queued += nbytes
            while self._queued - self._queue[0][1] >= self.lag:
                self._drop_oldest()
        except OSError:
            self.enabled = False  # e.g. EINVAL/ESPIPE: the file is simply written as before

    def finish(self) -> None:
        """Wait for and drop every piece still held (the file is complete), then the whole
        file: a page two pieces share is kept while either piece is only partly dropped."""
        try:
            while self.enabled and self._queue:
                self._drop_oldest()
            if self.enabled:
                self._drop(0, 0)  # offset 0, length 0: the whole file
        except OSError:
            self.enabled = False

    def _drop_oldest(self) -> None:
        offset, nbytes = self._queue.popleft()
        self._queued -= nbytes
        self._drop(offset, nbytes)

    def _drop(self, offset: int, nbytes: int) -> None:
        assert self._sync is not None and self._fadvise is not None
        self._sync(self.fd, offset, nbytes, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
        self._fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
