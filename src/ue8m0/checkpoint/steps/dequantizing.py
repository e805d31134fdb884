"""The ``dequantize`` step: FP8 codes and their stored scale (any shard) -> BF16 or F32, slab by
slab of whole block-rows."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.options import DequantizeOptions
from ue8m0.checkpoint.pairs import load_scale
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import element_fmt
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.steps.context import StepContext, task_weight


def dequantize_step(ctx: StepContext, task: Task) -> None:
    opts = ctx.options
    assert isinstance(opts, DequantizeOptions)
    w = task_weight(ctx, task)
    info = ctx.src.info(task.name)
    scale = load_scale(ctx.src_root, w, ctx.src)
    fmt = element_fmt(w.fmt)
    out_dtype = ml_dtypes.bfloat16 if opts.dtype == "bf16" else np.float32
    br = w.block[0]
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        s = scale[lead, r0 // br : -(-r1 // br)]
        with ctx.src.map_rows(task.name, lead, r0, r1) as x:
            q = QuantizedTensor.from_stored(x.view(fmt.dtype), s, fmt, w.block)
            deq = dequantize(q, out_dtype, threads=ctx.threads)
            del q
        ctx.out.write(task.name, deq)
        ctx.tick(deq.size * info.itemsize)
