"""``report --workers N``: tensors measured in worker processes, started the way the converters
start theirs (:mod:`ue8m0.checkpoint.runner`): the kernels compiled first in this process, then
forked where that is safe (:func:`~ue8m0.checkpoint.runner.start_method`), each worker dying
with its parent, compiling under one lock, and using its share of the cores as kernel threads.

Tensors go out largest first (the last to finish is a small one); their reports come back
pickled and are put back in checkpoint order, so the result is the one a single process gives.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ue8m0 import kernels
from ue8m0.checkpoint.procpool import WorkerPool, worker_queue
from ue8m0.recipes import Recipe
from ue8m0.report.progress import ReportProgress
from ue8m0.report.source import TensorRef

if TYPE_CHECKING:
    from ue8m0.report.analysis import TensorReport

#: how a worker measures one tensor: :func:`ue8m0.report.analysis.measure_tensor` (passed in by
#: its caller, so that this module does not import it back)
Measure = Callable[..., "TensorReport"]


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
        worker_queue().put(n)

    report = measure(ref, recipes, slab_bytes, reference=reference, threads=threads, on_bytes=tick)
    return index, report


@dataclass
class TensorPool(WorkerPool):
    """Worker processes over tensors (:class:`~ue8m0.checkpoint.procpool.WorkerPool`); start
    it before any other thread (the progress bar has none)."""

    recipes: list[Recipe] = field(default_factory=list)
    reference: bool = False
    where: Path = Path()
    _seen: int = 0

    @classmethod
    def start_for(
        cls, src: str | Path, recipes: list[Recipe], workers: int, reference: bool
    ) -> TensorPool:
        from ue8m0.report.fused import warm_up

        kernels.prefer_fork_safe_layer()  # before the warm-up loads a threading layer
        if not reference:
            warm_up(recipes)
        pool = cls.start(workers, Path(src), "a report worker process")
        pool.recipes, pool.reference, pool.where = list(recipes), reference, Path(src)
        return pool

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
                    raise self.died(
                        self.where, "a report worker process", f"while measuring {name}"
                    ) from None
                found[index] = report
                progress.tensor_done()
        # a worker's byte counts travel through its queue's feeder thread and can arrive after
        # its result: wait (briefly) until every byte is counted
        self._drain(progress, outstanding=sum(sizes) - self._seen)
        self.executor.shutdown()
        return [found[i] for i in range(len(refs))]

    def _drain(self, progress: ReportProgress, outstanding: int = 0) -> None:
        while True:
            try:
                n = self.queue.get(timeout=5.0) if outstanding > 0 else self.queue.get_nowait()
                self._seen += n
                outstanding -= n
                progress.advance(n)
            except queue.Empty:
                return
