"""Worker processes for the commands that fan out over a machine's cores (the converters over
shards, ``report`` over tensors): how they start, die and report back.

The caller compiles (or loads) the kernels its workers will call first; the pool then forks
where that is safe (:func:`start_method`), else spawns. Each worker shares one compile lock
(:func:`ue8m0.kernels.set_compile_lock`), dies with its parent (``PR_SET_PDEATHSIG``: a killed
run leaves no worker still writing), gets its share of the cores as kernel threads, and sends
progress through one queue (:func:`worker_queue`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ue8m0 import kernels
from ue8m0.errors import CheckpointError

#: ``fork`` or ``spawn``: overrides the start method :func:`start_method` picks
START_METHOD_ENV = "UE8M0_START_METHOD"

_QUEUE: Any = None
_P = TypeVar("_P", bound="WorkerPool")


def worker_queue() -> Any:
    """In a worker: the queue its progress goes to."""
    return _QUEUE


def _init_worker(q: Any, lock: Any, parent: int) -> None:
    global _QUEUE
    _QUEUE = q
    kernels.set_compile_lock(lock)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the parent dies (``PR_SET_PDEATHSIG``), so a
    killed run leaves no worker still writing into DST when it is resumed."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - other systems
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def start_method() -> str:
    """``fork`` where it is safe, else ``spawn``.

    Forked workers start at once with the kernels the parent compiled; a spawned one pays
    about a second (interpreter, imports, kernel cache). Forking is safe on Linux when numba's
    threading layer is fork-safe (:func:`ue8m0.kernels.fork_safe`; the CLI picks one) and no
    other thread runs (one holding a lock at the fork would leave it held in the child).
    ``UE8M0_START_METHOD`` (``fork`` or ``spawn``) overrides the choice.
    """
    forced = os.environ.get(START_METHOD_ENV, "").strip()
    if forced in ("fork", "spawn"):
        return forced
    safe = sys.platform.startswith("linux") and kernels.fork_safe()
    return "fork" if safe and threading.active_count() == 1 else "spawn"


@dataclass
class WorkerPool:
    """Worker processes, started before any other thread of the command (progress bars)."""

    executor: ProcessPoolExecutor
    queue: Any
    #: kernel threads per worker: the cores shared between the processes
    threads: int
    method: str

    @classmethod
    def start(cls: type[_P], workers: int, where: Path, what: str) -> _P:
        """``workers`` processes, all started now (call after compiling the kernels)."""
        method = start_method()
        ctx = multiprocessing.get_context(method)
        q = ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(q, ctx.Lock(), os.getpid())
        )
        # the first submit starts the processes (all of them, when forking) before the
        # executor's own thread; a no-op task makes that happen here. Native threads (BLAS,
        # numba's workqueue) come from libraries that handle fork; Python 3.12+ warns anyway.
        pool = cls(executor, q, threads, method)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
            try:
                executor.submit(int).result()
            except BrokenProcessPool:
                pool.kill()
                raise pool.died(where, what, "while starting") from None
        return pool

    def died(self, where: Path, what: str, doing: str, advice: str = "") -> CheckpointError:
        """The one-line error for a worker that died (the pool is broken from then on)."""
        return CheckpointError(
            where,
            f"{what} died {doing} (killed by the system, e.g. out of memory, or crashed; "
            f"{START_METHOD_ENV}={self.method}){advice}",
        )

    def kill(self) -> None:
        """Stop every worker and wait for them to be gone."""
        procs = list(getattr(self.executor, "_processes", {}).values())
        for proc in procs:
            proc.terminate()
        for proc in procs:  # dead before a caller cleans their temporary files
            proc.join(10)
        self.executor.shutdown(wait=False, cancel_futures=True)
