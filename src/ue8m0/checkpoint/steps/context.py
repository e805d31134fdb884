"""What every conversion step gets: the open source shard, the output writer, the plan's typed
options, a progress tick and the kernel thread count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    #: the other source shards a scale was read from, opened by :meth:`scale_file`
    others: dict[str, SafetensorsFile] = field(default_factory=dict)

    def scale_file(self, weight: Fp8Weight) -> SafetensorsFile:
        """The open source shard that holds ``weight``'s scale: this task's own, or another
        one, opened like it (a :class:`.srccrc.HashingFile` keeps the CRC of what it reads:
        the output depends on those bytes too). The caller closes :attr:`others`."""
        path = self.src_root / weight.scale_shard
        if path == self.src.path:
            return self.src
        opened = self.others.get(weight.scale_shard)
        if opened is None:
            opened = self.others[weight.scale_shard] = type(self.src)(path)
        return opened


#: a step converts one task's tensor into the writer; it returns a per-tensor stats row
#: (requantize, relayout) or None
Step = Callable[[StepContext, Task], "dict[str, Any] | None"]


def task_weight(ctx: StepContext, task: Task) -> Fp8Weight:
    """The FP8 weight (with its scale) that an FP8-source task converts."""
    assert task.scale and task.scale_shard and task.block and task.fmt
    bare = Fp8Weight(task.name, task.scale, task.scale_shard, "", task.block, task.fmt)
    scale_dtype = ctx.scale_file(bare).info(task.scale).dtype
    return Fp8Weight(task.name, task.scale, task.scale_shard, scale_dtype, task.block, task.fmt)
