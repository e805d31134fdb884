"""Thread-count control for the numba kernels: an argument, else ``UE8M0_NUM_THREADS``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numba

from ue8m0.errors import InputError

ENV_VAR = "UE8M0_NUM_THREADS"


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
