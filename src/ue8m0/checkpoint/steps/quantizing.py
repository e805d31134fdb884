"""The ``quantize`` step: a high-precision weight -> FP8 codes + block scales, slab by slab of
whole block-rows (each slab read and quantized on its own, written as soon as produced; the
scales are written at the end of the tensor)."""

from __future__ import annotations

import math

import numpy as np

from ue8m0.api import QuantizedTensor, quantize
from ue8m0.checkpoint.options import QuantizeOptions
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import element_fmt
from ue8m0.checkpoint.scales import SCALE_DTYPES, encode_scale
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.steps.context import StepContext
from ue8m0.errors import CheckpointError, NonFiniteError
from ue8m0.policies import ScaleRule


def quantize_step(ctx: StepContext, task: Task) -> None:
    opts = ctx.options
    assert isinstance(opts, QuantizeOptions) and opts.block is not None and opts.scale_dtype
    info = ctx.src.info(task.name)
    br = opts.block[0]
    scale_out = task.outputs[1]
    grid = scale_out.shape
    scales = np.empty((math.prod(grid[:-2]), *grid[-2:]), np.float32)
    codes = np.empty(scales.shape, np.uint8)
    for lead, r0, r1 in slabs(info.shape, info.itemsize, br):
        with ctx.src.map_rows(task.name, lead, r0, r1) as x:
            q = _quantize_slab(ctx, x, task, opts, info.shape, lead, r0)
        ctx.out.write(task.name, q.codes)
        g0 = r0 // br
        scales[lead, g0 : g0 + q.scale.shape[0]] = q.scale
        if q.scale_codes is not None:
            codes[lead, g0 : g0 + q.scale.shape[0]] = q.scale_codes
        ctx.tick((r1 - r0) * info.shape[-1] * info.itemsize)
    power_of_two = ScaleRule(opts.scale_rule).is_power_of_two
    stored = encode_scale(scales, codes if power_of_two else None, SCALE_DTYPES[opts.scale_dtype])
    ctx.out.write(scale_out.name, stored.reshape(grid))


def _quantize_slab(
    ctx: StepContext,
    x: np.ndarray,
    task: Task,
    opts: QuantizeOptions,
    shape: tuple[int, ...],
    lead: int,
    r0: int,
) -> QuantizedTensor:
    """``ue8m0.quantize`` of one slab; a non-finite value names the tensor and its block."""
    assert opts.block is not None
    try:
        return quantize(
            x,
            block=opts.block,
            fmt=element_fmt(opts.fmt),
            threads=ctx.threads,
            **opts.quantize_kwargs(),
        )
    except NonFiniteError as exc:
        lead_index = [int(i) for i in np.unravel_index(lead, shape[:-2])]
        where = (*lead_index, r0 // opts.block[0] + exc.block[-2], exc.block[-1])
        raise CheckpointError(
            ctx.src.path,
            f"non-finite value {exc.value} in block {where} "
            "(--nonfinite propagate keeps it as NaN)",
            task.name,
        ) from None
