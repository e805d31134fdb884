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
def next_task(shape: Any, task: int, ntasks: int, br: int, bc: int, chunk: int) -> Any:
    """``(batch, first row, end row, first col)`` of the task after ``task`` (or ``task`` itself).

    numba hands each thread a contiguous range of tasks, so the next task is usually this
    thread's next one; taken once per task (divisions), then :func:`prefetch_row` per row.
    """
    b, _, _, _, r0, r1, c0, _ = task_span(min(task + 1, ntasks - 1), shape, br, bc, chunk)
    return b, r0, r1, c0


@njit(cache=True, inline="always")
def prefetch_row(x: Any, nxt: Any, r: int, width: int) -> None:
    """Prefetch row ``r`` (relative) of the task ``nxt`` (:func:`next_task`): ``width`` elements."""
    b, r0, r1, c0 = nxt
    ahead = x[b, min(r0 + r, r1 - 1), c0 : c0 + width]
    for c in range(0, ahead.shape[0], max(1, 64 // x.itemsize)):
        prefetch(ahead, c)
