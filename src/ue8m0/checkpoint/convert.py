"""Convert one shard: stream its tensors through the step each task names.

Big tensors are processed in slabs of whole block-rows (:mod:`.slabs`), each written as soon as
it is produced, so memory stays near one slab's worth of temporaries plus one tensor's scales,
whatever the tensor's size. The output shard is written to a temporary file and renamed into
place when complete (:class:`.writer.SafetensorsWriter`). The source is read through
:class:`.srccrc.HashingFile`: the CRC-32 of the bytes read is left for the resume manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.options import Options
from ue8m0.checkpoint.plan import ShardPlan
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.srccrc import HashingFile, write_source_record
from ue8m0.checkpoint.stats import write_stats
from ue8m0.checkpoint.steps import STEPS, StepContext
from ue8m0.checkpoint.writer import SafetensorsWriter

Progress = Callable[[int], None]


def output_metadata(source: dict[str, str]) -> dict[str, str]:
    """Shard metadata: the source's, with ``format: pt`` (transformers checks it)."""
    return {**source, "format": "pt"}


def convert_shard(
    src_root: Path,
    dst_root: Path,
    shard: ShardPlan,
    options: Options,
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[int, str]:
    """Write output shard ``shard.name`` of ``dst_root``; returns ``(size, crc32)``."""
    tick = progress or (lambda n: None)
    dst_path = dst_root / shard.name
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    stats: list[dict[str, Any]] = []
    others: dict[str, SafetensorsFile] = {}
    try:
        src = HashingFile(src_root / shard.name)
        with src:
            with SafetensorsWriter(dst_path, shard.specs, output_metadata(src.metadata)) as out:
                ctx = StepContext(src, src_root, out, options, tick, threads, others)
                for task in shard.tasks:
                    row = STEPS[task.action](ctx, task)
                    if row is not None:
                        stats.append(row)
            write_source_record(dst_root, shard, src, others)
    finally:
        for f in others.values():
            f.close()
    if options.writes_stats:
        write_stats(dst_root, shard.name, stats)
    return out.size, out.checksum
