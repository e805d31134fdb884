"""Raw reads of source files: regular files only (a FIFO or device is refused before it can
block), and ``pread`` that turns a short read (a file truncated under us) into a one-line error.
The bottom of the I/O layer: the reader and the JSON loader both use it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ue8m0.errors import CheckpointError

__all__ = ["open_regular", "pread_exact", "pread_into"]


def open_regular(path: str | Path) -> int:
    """A read-only file descriptor of ``path``, which must be a regular file (after symlinks).

    A FIFO, device, socket or directory is refused before ``open`` is called (opening a FIFO
    blocks until a writer comes; opening a device can have effects), and again on the open
    descriptor: ``O_NONBLOCK`` makes even a FIFO swapped in between return at once. Every
    failure is a one-line :class:`CheckpointError`.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(path, _os_reason(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, f"not a regular file ({_kind(st.st_mode)}): refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointError(path, _os_reason(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(path, f"not a regular file ({_kind(mode)}): refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def pread_into(
    fd: int, buf: memoryview, offset: int, path: object, name: str | None = None
) -> None:
    """Fill ``buf`` from ``offset`` of ``fd``; a short read (the file shrank) is a
    ``CheckpointError`` naming ``path`` (and tensor ``name``)."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(path, "truncated while reading (it changed under us?)", name)
        done += n


def pread_exact(fd: int, offset: int, size: int, path: object, name: str | None = None) -> bytes:
    """Exactly ``size`` bytes at ``offset`` of ``fd`` (see :func:`pread_into`)."""
    buf = bytearray(size)
    pread_into(fd, memoryview(buf), offset, path, name)
    return bytes(buf)
