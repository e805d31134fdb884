"""One run per destination: an exclusive ``flock`` on ``DST/.ue8m0-lock`` for the whole run.

A second run into the same DST (another shell, another set of options) stops at once with one
line naming the holder (pid, host, start time), before it cleans, plans or writes anything, so
two runs can never delete each other's temporary files or mix their shards.

The kernel drops a ``flock`` when its holder dies, so the lock of a killed run (SIGKILL,
out of memory, a reboot) is taken over by the next run without any staleness heuristic; the
file's text (pid, host, time) only names the holder in the error. The file is removed when the
run ends; whoever locks it checks that the path still names the file it locked (else the
holder removed it meanwhile, and the lock is taken again on the new file).

Limits: ``flock`` is advisory (it stops ue8m0 runs, not other programs). On NFS, Linux emulates
``flock`` with a POSIX lock on the whole file: it holds across clients on NFSv4 and on NFSv3
with a lock manager (``lockd``), but on a mount with ``nolock`` (or a file system without
locking, e.g. some FUSE ones) it only excludes runs on the same host. A Ray run's lock is held by
the driver; its tasks write into DST under it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ue8m0.errors import CheckpointError

LOCK_NAME = ".ue8m0-lock"


class DstLock:
    """The held lock of a destination directory; ``release()`` (or leaving the ``with``)
    removes the file and drops the lock."""

    def __init__(self, dst: Path, fd: int) -> None:
        self.path = dst / LOCK_NAME
        self._fd = fd

    def __enter__(self) -> DstLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            if _same_file(self.path, self._fd):
                self.path.unlink(missing_ok=True)  # while still locked: see the module doc
        finally:
            os.close(self._fd)
            self._fd = -1


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def holder_text(command: str) -> str:
    """What the lock file says about its holder (one JSON line)."""
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command,
        }
    )


def describe_holder(path: Path) -> str:
    """``pid N on HOST since TIME (COMMAND)`` from the lock file, as far as it can be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            data = json.loads(f.read(4096) or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or "pid" not in data:
        return "another ue8m0 run (it has not written its pid yet)"
    pid, host = data.get("pid"), data.get("host", "?")
    text = f"another ue8m0 run (pid {pid} on {host}"
    if data.get("started"):
        text += f", since {data['started']}"
    if data.get("command"):
        text += f", {data['command']}"
    text += ")"
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        text += (
            f"; pid {pid} is gone, but a process it started still holds the lock (look for "
            "ue8m0 workers left running)"
        )
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(dst: Path, command: str = "") -> DstLock:
    """Lock ``dst`` (an existing directory) for this run, or raise a one-line
    :class:`CheckpointError` naming the run that holds it."""
    path = dst / LOCK_NAME
    for _ in range(100):  # each retry means the holder removed the file meanwhile
        if path.is_symlink():
            raise CheckpointError(path, "is a symbolic link: refused (ue8m0's lock file)")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise CheckpointError(
                dst,
                f"{describe_holder(path)} is writing into this destination ({LOCK_NAME}): "
                "wait for it to finish or stop it, or use another destination",
            ) from None
        if not _same_file(path, fd):
            os.close(fd)
            continue
        text = holder_text(command).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        return DstLock(dst, fd)
    raise CheckpointError(path, "could not be locked (it keeps being replaced)")
