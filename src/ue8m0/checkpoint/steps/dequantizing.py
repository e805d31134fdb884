"""The ``dequantize`` step: FP8 codes and their stored scale (any shard) -> BF16 or F32, slab by
slab of whole block-rows, each slab's scale rows read with it."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.options import DequantizeOptions
from ue8m0.checkpoint.pairs import Fp8Weight, load_scale
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import MX_BLOCK, element_fmt
from ue8m0.checkpoint.scales import decode_scale
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
    scales = _ScaleRows(ctx, task, w)
    out_dtype = ml_dtypes.bfloat16 if opts.dtype == "bf16" else np.float32
    if w.packed:
        _dequantize_fp4(ctx, task, scales, out_dtype)
        return
    fmt = element_fmt(w.fmt)
    br = w.block[0]
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        s = scales.rows(lead, r0 // br, -(-r1 // br))
        with ctx.src.map_rows(task.name, lead, r0, r1) as x:
            q = QuantizedTensor.from_stored(x.view(fmt.dtype), s, fmt, w.block)
            deq = dequantize(q, out_dtype, threads=ctx.threads)
            del q
        ctx.out.write(task.name, deq)
        ctx.tick(deq.size * info.itemsize)


def _dequantize_fp4(ctx: StepContext, task: Task, scales: _ScaleRows, out_dtype: Any) -> None:
    """Packed FP4 rows (two E2M1 codes per byte, element 2i in the low nibble) times their
    per-32 scales, in float32 (exact), rounded once to the output dtype."""
    info = ctx.src.info(task.name)
    for lead, r0, r1 in slabs(info.shape, info.itemsize * 2, 1):
        codes = unpack_fp4(ctx.src.read_rows(task.name, lead, r0, r1))
        q = QuantizedTensor.from_stored(
            codes.view(FLOAT4_E2M1FN.dtype), scales.rows(lead, r0, r1), FLOAT4_E2M1FN, MX_BLOCK
        )
        deq = dequantize(q, out_dtype, threads=ctx.threads)
        ctx.out.write(task.name, deq)
        ctx.tick((r1 - r0) * info.shape[-1] * info.itemsize)


class _ScaleRows:
    """A weight's float32 dequant multipliers, read a slab's grid rows at a time (a release's
    largest scale, DeepSeek-V4.1's Engram table, is 3 GB stored and 12 GB as float32); a scale
    of fewer than 2 dims is read whole. A NaN or infinite multiplier (E8M0 byte 0xFF, a float
    NaN/Inf) has no value to dequantize with: one line naming the weight, its scale and the
    first such block."""

    def __init__(self, ctx: StepContext, task: Task, w: Fp8Weight) -> None:
        self.ctx, self.task, self.w = ctx, task, w
        self.file = ctx.scale_file(w)
        self.info = self.file.info(w.scale)
        self.whole = None if len(self.info.shape) >= 2 else load_scale(ctx.src_root, w, self.file)

    def rows(self, lead: int, g0: int, g1: int) -> np.ndarray:
        if self.whole is not None:
            out = self.whole[lead, g0:g1]
        else:
            out = decode_scale(self.file.read_rows(self.w.scale, lead, g0, g1), self.info.dtype)
        bad = np.argwhere(~np.isfinite(out))
        if bad.size:
            self._refuse(out, (lead, g0 + int(bad[0][0]), int(bad[0][1])), bad[0])
        return out

    def _refuse(self, out: np.ndarray, where: tuple[int, ...], local: np.ndarray) -> None:
        byte = " (byte 0xFF)" if self.info.dtype in ("F8_E8M0", "U8") else ""
        what = f"NaN{byte}" if np.isnan(out[tuple(local)]) else "infinite"
        if len(self.info.shape) <= 2:
            where = where[1:]
        raise CheckpointError(
            self.ctx.src.path, f"scale {self.task.scale} is {what} at {where}", self.task.name
        )
