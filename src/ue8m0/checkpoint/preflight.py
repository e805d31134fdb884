"""Checks on a plan before anything is written into DST.

A plan is made shard by shard; two of its outputs can still collide: ``X.weight`` quantized in
one shard writes ``X.weight_scale_inv``, which another shard may already hold as a tensor of
its own (copied as it is). The output would then hold one name twice (its own ``verify``
refuses it) or, across shards, an index pointing at one of the two. Every output name must be
written once, and every output shard must have a name ue8m0 does not use for its own files.
"""

from __future__ import annotations

from ue8m0.checkpoint.plan import Plan
from ue8m0.checkpoint.source import Checkpoint, reserved_reason
from ue8m0.errors import CheckpointError


def check_plan(ckpt: Checkpoint, plan: Plan) -> None:
    """Raise a one-line :class:`CheckpointError` for the first output name written twice, or
    the first output shard whose name is reserved."""
    written: dict[str, tuple[str, str]] = {}  # output name -> (shard, source tensor)
    for shard in plan.shards:
        reason = reserved_reason(shard.name)
        if reason is not None:
            raise CheckpointError(ckpt.path(shard.name), f"shard name {reason}: refused")
        for task in shard.tasks:
            for out in task.outputs:
                first = written.get(out.name)
                if first is not None:
                    raise CheckpointError(
                        ckpt.path(shard.name),
                        f"output tensor {out.name!r} would be written twice: from "
                        f"{_what(out.name, task.name)} here and from "
                        f"{_what(out.name, first[1])} in {first[0]}",
                        task.name,
                    )
                written[out.name] = (shard.name, task.name)


def _what(out: str, source: str) -> str:
    return f"{source!r}" if out == source else f"{source!r} (its scale)"
