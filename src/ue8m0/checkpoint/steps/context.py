"""What every conversion step gets: the open source shard, the output writer, the plan's typed
options, a progress tick and the kernel thread count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.options import Options
from ue8m0.checkpoint.pairs import Fp8Weight
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.writer import SafetensorsWriter

Tick = Callable[[int], None]


@dataclass
class StepContext:
    src: SafetensorsFile
    src_root: Path
    out: SafetensorsWriter
    options: Options
    tick: Tick
    threads: int | None


#: a step converts one task's tensor into the writer; it returns a per-tensor stats row
#: (requantize, relayout) or None
Step = Callable[[StepContext, Task], "dict[str, Any] | None"]


def task_weight(ctx: StepContext, task: Task) -> Fp8Weight:
    """The FP8 weight (with its scale) that an FP8-source task converts."""
    assert task.scale and task.scale_shard and task.block and task.fmt
    info = ctx.src.info(task.name)
    return Fp8Weight(task.name, task.scale, task.scale_shard, info.dtype, task.block, task.fmt)
