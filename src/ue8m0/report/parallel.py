"""``report --workers N``: tensors measured in worker processes, started the way the converters
start theirs (:mod:`ue8m0.checkpoint.runner`): the kernels compiled first in this process, then
forked where that is safe (:func:`~ue8m0.checkpoint.runner.start_method`), each worker dying
with its parent, compiling under one lock, and using its share of the cores as kernel threads.

Tensors go out largest first (the last to finish is a small one); their reports come back
pickled and are put back in checkpoint order, so the result is the one a single process gives.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ue8m0 import kernels
from ue8m0.checkpoint.runner import START_METHOD_ENV, _die_with, start_method
from ue8m0.errors import CheckpointError
from ue8m0.recipes import Recipe
from ue8m0.report.progress import ReportProgress
from ue8m0.report.source import TensorRef

if TYPE_CHECKING:
    from ue8m0.report.analysis import TensorReport

#: how a worker measures one tensor: :func:`ue8m0.report.analysis.measure_tensor` (passed in by
#: its caller, so that this module does not import it back)
Measure = Callable[..., "TensorReport"]

_QUEUE: Any = None


def _init_worker(q: Any, lock: Any, parent: int) -> None:
    global _QUEUE
    _QUEUE = q
    kernels.set_compile_lock(lock)
    _die_with(parent)


def _measure(
    measure: Measure,
    index: int,
    ref: TensorRef,
    recipes: list[Recipe],
    slab_bytes: int,
    reference: bool,
    threads: int,
) -> tuple[int, TensorReport]:
    def tick(n: int) -> None:
        _QUEUE.put(n)

    report = measure(ref, recipes, slab_bytes, reference=reference, threads=threads, on_bytes=tick)
    return index, report


@dataclass
class TensorPool:
    """Worker processes over tensors; start it before any other thread (the progress bar has
    none)."""

    executor: ProcessPoolExecutor
    queue: Any
    recipes: list[Recipe]
    reference: bool
    threads: int
    method: str
    where: Path

    @classmethod
    def start(
        cls, src: str | Path, recipes: list[Recipe], workers: int, reference: bool
    ) -> TensorPool:
        from ue8m0.report.fused import warm_up

        kernels.prefer_fork_safe_layer()  # before the warm-up loads a threading layer
        if not reference:
            warm_up(recipes)
        method = start_method()
        ctx = multiprocessing.get_context(method)
        q = ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(q, ctx.Lock(), os.getpid())
        )
        pool = cls(executor, q, recipes, reference, threads, method, Path(src))
        # start the processes now, before the executor's own thread (as the runner does)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
            try:
                executor.submit(int).result()
            except BrokenProcessPool:
                pool.kill()
                raise pool.died("while starting") from None
        return pool

    def died(self, doing: str) -> CheckpointError:
        return CheckpointError(
            self.where,
            f"a report worker process died {doing} (killed by the system, e.g. out of memory, "
            f"or crashed; {START_METHOD_ENV}={self.method})",
        )

    def run(
        self,
        measure: Measure,
        refs: list[TensorRef],
        sizes: list[int],
        slab_bytes: int,
        progress: ReportProgress,
    ) -> list[TensorReport]:
        """Measure ``refs`` (of ``sizes`` bytes) with ``measure``; their reports in the order
        of ``refs``."""
        order = sorted(range(len(refs)), key=lambda i: -sizes[i])
        pending: dict[Future[Any], str] = {}
        for i in order:
            args = (measure, i, refs[i], self.recipes, slab_bytes, self.reference, self.threads)
            pending[self.executor.submit(_measure, *args)] = refs[i].name
        found: dict[int, TensorReport] = {}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            self._drain(progress)
            for fut in done:
                name = pending.pop(fut)
                try:
                    index, report = fut.result()
                except BrokenProcessPool:
                    raise self.died(f"while measuring {name}") from None
                found[index] = report
                progress.tensor_done()
        self._drain(progress)
        self.executor.shutdown()
        return [found[i] for i in range(len(refs))]

    def _drain(self, progress: ReportProgress) -> None:
        while True:
            try:
                progress.advance(self.queue.get_nowait())
            except queue.Empty:
                return

    def kill(self) -> None:
        for proc in list(getattr(self.executor, "_processes", {}).values()):
            proc.terminate()
        self.executor.shutdown(wait=False, cancel_futures=True)
