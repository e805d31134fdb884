"""Convert one shard: stream its tensors through ``ue8m0.quantize`` / ``ue8m0.dequantize``.

Big tensors are processed in slabs of whole block-rows (a slab is read with ``pread`` and
quantized on its own; blocks never straddle slabs, so the bytes equal those of quantizing the
whole tensor at once) and each slab is written as soon as it is produced. Memory stays near
one slab's worth of temporaries plus one tensor's scales, whatever the tensor's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from ue8m0.api import QuantizedTensor, dequantize, quantize
from ue8m0.checkpoint.layout import SCALE_DTYPES, decode_scale, element_fmt, encode_scale
from ue8m0.checkpoint.plan import QuantizeOptions, ShardPlan, Task
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.writer import SafetensorsWriter
from ue8m0.errors import CheckpointError, NonFiniteError
from ue8m0.policies import ScaleRule

#: target bytes of input per slab
SLAB_BYTES = 32 * 1024 * 1024
COPY_BYTES = 64 * 1024 * 1024

Progress = Callable[[int], None]


def slabs(
    shape: tuple[int, ...], itemsize: int, block_rows: int, target: int = SLAB_BYTES
) -> Iterator[tuple[int, int, int]]:
    """``(lead, r0, r1)`` slabs of whole block-rows covering a (..., rows, cols) tensor."""
    rows, cols = shape[-2], shape[-1]
    lead = math.prod(shape[:-2])
    per_row = max(1, cols * itemsize)
    step = max(block_rows, (target // per_row) // block_rows * block_rows)
    for e in range(lead):
        for r0 in range(0, rows, step):
            yield e, r0, min(rows, r0 + step)


def output_metadata(source: dict[str, str]) -> dict[str, str]:
    """Shard metadata: the source's, with ``format: pt`` (transformers checks it)."""
    return {**source, "format": "pt"}


def convert_shard(
    src_root: Path,
    dst_root: Path,
    shard: ShardPlan,
    kind: str,
    options: dict[str, object],
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[int, str]:
    """Write output shard ``shard.name`` of ``dst_root``; returns ``(size, crc32)``."""
    tick = progress or (lambda n: None)
    src_path = src_root / shard.name
    dst_path = dst_root / shard.name
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    stats: list[dict[str, object]] = []
    with SafetensorsFile(src_path) as src:
        metadata = output_metadata(src.metadata)
        with SafetensorsWriter(dst_path, shard.specs, metadata) as out:
            for task in shard.tasks:
                if task.action in ("requantize", "relayout"):
                    stats.append(_fp8_task(src, src_root, out, task, options, tick, threads))
                elif task.action == "copy":
                    _copy(src, out, task, tick)
                elif task.action == "quantize":
                    opts = QuantizeOptions(**options)  # type: ignore[arg-type]
                    _quantize(src, out, task, opts, tick, threads)
                elif task.action == "dequantize":
                    _dequantize(src, src_root, out, task, str(options["dtype"]), tick, threads)
                else:
                    tick(src.info(task.name).nbytes)
    if kind in ("requantize", "relayout"):
        from ue8m0.checkpoint.fp8convert import write_stats

        write_stats(dst_root, shard.name, stats)
    return out.size, out.checksum


def _fp8_task(
    src: SafetensorsFile,
    src_root: Path,
    out: SafetensorsWriter,
    task: Task,
    options: dict[str, object],
    tick: Progress,
    threads: int | None,
) -> dict[str, object]:
    """A ``requantize`` or ``relayout`` task (:mod:`ue8m0.checkpoint.fp8convert`)."""
    from ue8m0.checkpoint.fp8convert import relayout_task, requantize_task
    from ue8m0.checkpoint.requantize import Fp8Options

    opts = Fp8Options(**options)  # type: ignore[arg-type]
    run = relayout_task if task.action == "relayout" else requantize_task
    return run(src, src_root, out, task, opts, tick, threads)


def _copy(src: SafetensorsFile, out: SafetensorsWriter, task: Task, tick: Progress) -> None:
    nbytes = src.info(task.name).nbytes
    for start in range(0, nbytes, COPY_BYTES):
        stop = min(nbytes, start + COPY_BYTES)
        out.write(task.name, src.read_bytes(task.name, start, stop))
        tick(stop - start)


def _quantize(
    src: SafetensorsFile,
    out: SafetensorsWriter,
    task: Task,
    opts: QuantizeOptions,
    tick: Progress,
    threads: int | None,
) -> None:
    info = src.info(task.name)
    br = opts.block[0]
    scale_tag = SCALE_DTYPES[opts.scale_dtype]
    scale_name = task.outputs[1].name
    grid = task.outputs[1].shape
    scales = np.empty((math.prod(grid[:-2]), *grid[-2:]), np.float32)
    codes = np.empty(scales.shape, np.uint8)
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        with src.map_rows(task.name, lead, r0, r1) as x:
            q = _quantize_slab(x, src, task, opts, threads, info.shape, lead, r0)
        out.write(task.name, q.codes)
        g0 = r0 // br
        scales[lead, g0 : g0 + q.scale.shape[0]] = q.scale
        if q.scale_codes is not None:
            codes[lead, g0 : g0 + q.scale.shape[0]] = q.scale_codes
        tick((r1 - r0) * info.shape[-1] * info.itemsize)
    stored = encode_scale(
        scales, codes if opts.scale_rule != ScaleRule.FP32.value else None, scale_tag
    )
    out.write(scale_name, stored.reshape(grid))


def _quantize_slab(
    x: np.ndarray,
    src: SafetensorsFile,
    task: Task,
    opts: QuantizeOptions,
    threads: int | None,
    shape: tuple[int, ...],
    lead: int,
    r0: int,
) -> QuantizedTensor:
    """``ue8m0.quantize`` of one slab; a non-finite value names the tensor and its block."""
    br, bc = opts.block
    try:
        return quantize(
            x,
            block=(br, bc),
            fmt=element_fmt(opts.fmt),
            scale_rule=opts.scale_rule,
            eps=opts.eps,
            nonfinite=opts.nonfinite,
            scale_search=opts.scale_search,
            threads=threads,
        )
    except NonFiniteError as exc:
        lead_index = [int(i) for i in np.unravel_index(lead, shape[:-2])]
        where = (*lead_index, r0 // br + exc.block[-2], exc.block[-1])
        raise CheckpointError(
            src.path,
            f"non-finite value {exc.value} in block {where} "
            "(--nonfinite propagate keeps it as NaN)",
            task.name,
        ) from None


def _dequantize(
    src: SafetensorsFile,
    src_root: Path,
    out: SafetensorsWriter,
    task: Task,
    dtype: str,
    tick: Progress,
    threads: int | None,
) -> None:
    info = src.info(task.name)
    assert task.scale is not None and task.scale_shard is not None and task.block is not None
    assert task.fmt is not None
    if src_root / task.scale_shard == src.path:
        sinfo = src.info(task.scale)
        raw = src.read(task.scale)
    else:
        with SafetensorsFile(src_root / task.scale_shard) as other:
            sinfo = other.info(task.scale)
            raw = other.read(task.scale)
    scale = decode_scale(raw, sinfo.dtype)
    scale = scale.reshape(-1, *scale.shape[-2:])
    fmt = element_fmt(task.fmt)
    out_dtype = ml_dtypes.bfloat16 if dtype == "bf16" else np.float32
    br = task.block[0]
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        s = scale[lead, r0 // br : -(-r1 // br)]
        with src.map_rows(task.name, lead, r0, r1) as x:
            q = QuantizedTensor(x.view(fmt.dtype), s, None, fmt, task.block, ScaleRule.FP32)
            deq = dequantize(q, out_dtype, threads=threads)
            del q
        out.write(task.name, deq)
        tick(deq.size * info.itemsize)
