"""How the kernels cut a tensor into parallel tasks, and the prefetch of the next task.

A task is ``chunk`` consecutive blocks of one block row of one batch entry, numbered in C
order of (batch, block row, chunk); both kernels walk a task row by row.
"""

from __future__ import annotations

from typing import Any

from numba import njit

from ue8m0.kernels._bits import prefetch


@njit(cache=True, inline="always")
def task_grid(shape: Any, br: int, bc: int, chunk: int) -> Any:
    """``(block rows, block cols, chunks per block row, tasks)`` of a (batch, rows, cols) shape."""
    nb, rows, cols = shape
    gr = (rows + br - 1) // br
    gc = (cols + bc - 1) // bc
    nchunks = (gc + chunk - 1) // chunk
    return gr, gc, nchunks, nb * gr * nchunks


@njit(cache=True, inline="always")
def task_span(task: int, shape: Any, br: int, bc: int, chunk: int) -> Any:
    """``(batch, block row, first block col, blocks, first row, end row, first col, width)``."""
    _, rows, cols = shape
    gr, gc, nchunks, _ = task_grid(shape, br, bc, chunk)
    b = task // (gr * nchunks)
    rest = task - b * gr * nchunks
    i = rest // nchunks
    j0 = (rest - i * nchunks) * chunk
    nj = min(j0 + chunk, gc) - j0
    r0 = i * br
    ca = j0 * bc
    return b, i, j0, nj, r0, min(r0 + br, rows), ca, min(ca + nj * bc, cols) - ca


@njit(cache=True, inline="always")
def prefetch_next_task(
    x: Any, task: int, ntasks: int, br: int, bc: int, chunk: int, r: int, width: int
) -> None:
    """Prefetch row ``r`` (relative) of the next task's run of ``width`` elements of ``x``.

    numba hands each thread a contiguous range of tasks, so the next task is usually this
    thread's next one.
    """
    b, _, _, _, r0, r1, c0, _ = task_span(min(task + 1, ntasks - 1), x.shape, br, bc, chunk)
    ahead = x[b, min(r0 + r, r1 - 1), c0 : c0 + width]
    for c in range(0, ahead.shape[0], max(1, 64 // x.itemsize)):
        prefetch(ahead, c)
