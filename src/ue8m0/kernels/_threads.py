"""Thread-count control for the numba kernels: an argument, else ``UE8M0_NUM_THREADS``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numba

from ue8m0.errors import InputError

ENV_VAR = "UE8M0_NUM_THREADS"
#: numba threading layers after which a forked child can run parallel kernels (GNU OpenMP,
#: numba's usual choice, aborts a child forked from a process that loaded it)
FORK_SAFE_LAYERS = ("workqueue", "tbb")


def resolve_threads(threads: int | None) -> int:
    """The worker count to use: ``threads``, else ``$UE8M0_NUM_THREADS``, else all.

    Values above numba's pool size (``NUMBA_NUM_THREADS``, the CPU count by default) are
    clamped to it; anything that is not a positive integer is an :class:`InputError`.
    """
    source = "threads"
    value: object = threads
    if threads is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return int(_pool_size())
        source = ENV_VAR
        try:
            value = int(env)
        except ValueError:
            raise InputError(f"{ENV_VAR}={env!r}: expected a positive integer") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{source}={value!r}: expected a positive integer")
    return min(value, int(_pool_size()))


def _pool_size() -> int:
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Run the enclosed kernel calls on ``resolve_threads(threads)`` workers, then restore."""
    n = resolve_threads(threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)


def fork_safe() -> bool:
    """Whether a child forked now can run the kernels: numba's threading layer, loaded or the
    one it will load, is fork-safe (:data:`FORK_SAFE_LAYERS`)."""
    try:
        return str(numba.threading_layer()) in FORK_SAFE_LAYERS
    except ValueError:  # not loaded yet: the configured choice decides
        wanted = str(numba.config.THREADING_LAYER)  # type: ignore[attr-defined]
        return wanted in (*FORK_SAFE_LAYERS, "forksafe")


def prefer_fork_safe_layer() -> None:
    """Make this process load numba's ``workqueue`` layer (fork-safe, same speed for these
    coarse tasks, but not for kernels called from several Python threads at once) unless a
    layer is loaded already or the user chose one (``NUMBA_THREADING_LAYER``). For a process
    that forks workers and calls the kernels from one thread: the CLI."""
    try:
        numba.threading_layer()
    except ValueError:
        if str(numba.config.THREADING_LAYER) == "default":  # type: ignore[attr-defined]
            numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
