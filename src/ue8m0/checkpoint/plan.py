"""What a conversion does to each tensor, and what each output shard will hold.

A plan is computed from the headers alone, before any data is read (by the command's planning
module: :mod:`.plan_quantize`, :mod:`.plan_dequantize`, :mod:`.plan_fp8`): it is what
``--dry-run`` prints, what the workers execute (each task's ``action`` names a step of
:data:`ue8m0.checkpoint.steps.STEPS`, run with the plan's typed options) and what the manifest's
parameters describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ue8m0.checkpoint.options import Options
from ue8m0.checkpoint.safetensors import DTYPES, TensorInfo
from ue8m0.checkpoint.writer import OutSpec


@dataclass(frozen=True)
class Task:
    """One source tensor and the step that converts it (``quantize``, ``dequantize``,
    ``requantize``, ``relayout``, ``copy`` or ``drop`` — a consumed scale)."""

    name: str
    action: str
    reason: str
    outputs: tuple[OutSpec, ...] = ()
    scale: str | None = None
    scale_shard: str | None = None
    block: tuple[int, int] | None = None
    fmt: str | None = None


def copy_task(info: TensorInfo, reason: str) -> Task:
    """The task that copies ``info`` as it is."""
    return Task(info.name, "copy", reason, (OutSpec(info.name, info.dtype, info.shape),))


@dataclass
class ShardPlan:
    """One output shard: same name as its source shard."""

    name: str
    tasks: list[Task]
    in_bytes: int

    @property
    def specs(self) -> list[OutSpec]:
        """Output tensors in file order: wider dtypes first (aligned), source order within."""
        outs = [o for t in self.tasks for o in t.outputs]
        return sorted(outs, key=lambda o: -DTYPES[o.dtype].itemsize)

    @property
    def out_bytes(self) -> int:
        return sum(o.nbytes for t in self.tasks for o in t.outputs)


@dataclass
class Plan:
    """A whole conversion: its kind (the command), shards, output config and typed options."""

    kind: str
    shards: list[ShardPlan]
    config: dict[str, Any] | None
    options: Options
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        """What the manifest records: the command and every option."""
        return {"command": self.kind, **self.options.params()}

    @property
    def tasks(self) -> list[Task]:
        return [t for s in self.shards for t in s.tasks]

    @property
    def in_bytes(self) -> int:
        return sum(s.in_bytes for s in self.shards)

    @property
    def out_bytes(self) -> int:
        return sum(s.out_bytes for s in self.shards)

    def weight_map(self) -> dict[str, str]:
        return {o.name: s.name for s in self.shards for t in s.tasks for o in t.outputs}

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.tasks:
            counts[t.action] = counts.get(t.action, 0) + 1
        return {
            "kind": self.kind,
            "shards": len(self.shards),
            "tensors": counts,
            "bytes_in": self.in_bytes,
            "bytes_out": self.out_bytes,
            "params": self.params,
        }
