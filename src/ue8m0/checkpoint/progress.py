"""The progress sink a conversion reports to (the CLI subclasses it with bars), and the peak
memory a process reports back. Kept apart from the runner so that the CLI and the executors can
name them without importing the kernels or the runner."""

from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """Peak resident set of this process since exec (VmHWM; ru_maxrss would include the peak
    of the parent copy a fork started from)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


class Progress:
    """All methods are no-ops here."""

    def start(self, total_bytes: int, shards: int) -> None: ...
    def shard_start(self, shard: str, nbytes: int) -> None: ...
    def advance(self, shard: str, nbytes: int) -> None: ...
    def shard_done(self, shard: str) -> None: ...
    def close(self) -> None: ...
