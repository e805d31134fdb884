"""The ``dequantize`` step: FP8 codes and their stored scale (any shard) -> BF16 or F32, slab by
slab of whole block-rows."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.options import DequantizeOptions
from ue8m0.checkpoint.pairs import load_scale
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import MX_BLOCK, element_fmt
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.steps.context import StepContext, task_weight
from ue8m0.errors import CheckpointError
from ue8m0.formats import FLOAT4_E2M1FN
from ue8m0.fp4 import unpack_fp4


def dequantize_step(ctx: StepContext, task: Task) -> None:
    opts = ctx.options
    assert isinstance(opts, DequantizeOptions)
    w = task_weight(ctx, task)
    info = ctx.src.info(task.name)
    scale = load_scale(ctx.src_root, w, ctx.scale_file(w))
    _refuse_nonfinite(ctx, task, scale, ctx.scale_file(w).info(w.scale).dtype)
    out_dtype = ml_dtypes.bfloat16 if opts.dtype == "bf16" else np.float32
    if w.packed:
        _dequantize_fp4(ctx, task, scale, out_dtype)
        return
    fmt = element_fmt(w.fmt)
    br = w.block[0]
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        s = scale[lead, r0 // br : -(-r1 // br)]
        with ctx.src.map_rows(task.name, lead, r0, r1) as x:
            q = QuantizedTensor.from_stored(x.view(fmt.dtype), s, fmt, w.block)
            deq = dequantize(q, out_dtype, threads=ctx.threads)
            del q
        ctx.out.write(task.name, deq)
        ctx.tick(deq.size * info.itemsize)


def _dequantize_fp4(ctx: StepContext, task: Task, scale: np.ndarray, out_dtype: Any) -> None:
    """Packed FP4 rows (two E2M1 codes per byte, element 2i in the low nibble) times their
    per-32 scales, in float32 (exact), rounded once to the output dtype."""
    info = ctx.src.info(task.name)
    for lead, r0, r1 in slabs(info.shape, info.itemsize * 2, 1):
        codes = unpack_fp4(ctx.src.read_rows(task.name, lead, r0, r1))
        q = QuantizedTensor.from_stored(
            codes.view(FLOAT4_E2M1FN.dtype), scale[lead, r0:r1], FLOAT4_E2M1FN, MX_BLOCK
        )
        deq = dequantize(q, out_dtype, threads=ctx.threads)
        ctx.out.write(task.name, deq)
        ctx.tick((r1 - r0) * info.shape[-1] * info.itemsize)


def _refuse_nonfinite(ctx: StepContext, task: Task, scale: np.ndarray, tag: str) -> None:
    """A NaN or infinite dequant multiplier (E8M0 byte 0xFF, a float NaN/Inf) has no value to
    dequantize with: one line naming the weight, its scale and the first such block."""
    bad = np.argwhere(~np.isfinite(scale))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        byte = " (byte 0xFF)" if tag in ("F8_E8M0", "U8") else ""
        what = f"NaN{byte}" if np.isnan(scale[where]) else "infinite"
        if where[0] == 0 and scale.shape[0] == 1:
            where = where[1:]
        raise CheckpointError(ctx.src.path, f"scale {task.scale} is {what} at {where}", task.name)
