"""The steps that move bytes as they are: ``copy`` (a kept tensor) and ``drop`` (a consumed
scale, read past)."""

from __future__ import annotations

from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.slabs import copy_pieces
from ue8m0.checkpoint.steps.context import StepContext


def copy_step(ctx: StepContext, task: Task) -> None:
    for start, stop in copy_pieces(ctx.src.info(task.name).nbytes):
        ctx.out.write(task.name, ctx.src.read_bytes(task.name, start, stop))
        ctx.tick(stop - start)


def drop_step(ctx: StepContext, task: Task) -> None:
    ctx.tick(ctx.src.info(task.name).nbytes)
