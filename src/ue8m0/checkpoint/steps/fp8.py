"""The ``requantize`` and ``relayout`` steps: an FP8 weight with its stored scale -> the output
layout, slab by slab of whole source block-rows. Each slab is dequantized in float32,
requantized (or relaid out) and written; the new scales are written at the end of the tensor.
Each returns the tensor's error sums for the report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ue8m0.api import QuantizedTensor, dequantize, quantize
from ue8m0.checkpoint.fp8source import dequantize_rows
from ue8m0.checkpoint.options import Fp8Options
from ue8m0.checkpoint.pairs import load_scale
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import element_fmt
from ue8m0.checkpoint.scales import encode_scale, ue8m0_codes
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.steps.context import StepContext, task_weight
from ue8m0.errors import CheckpointError, NonFiniteError
from ue8m0.layouts import mx_relayout
from ue8m0.metrics import ErrorStats, expand_blocks, saturated_mask
from ue8m0.search import refine_mse

#: 8 bytes per element: the float64 error sums dominate a slab's temporaries
_STAT_ITEMSIZE = 8


def _fp8_options(ctx: StepContext) -> Fp8Options:
    assert isinstance(ctx.options, Fp8Options)
    return ctx.options


def _requantize_slab(
    x: np.ndarray, block: tuple[int, int], opts: Fp8Options, fmt: str, threads: int | None
) -> tuple[QuantizedTensor, QuantizedTensor | None]:
    """(result, plain-rule result when the MSE search changed it) of quantizing ``x``."""
    el = element_fmt(fmt)
    q = quantize(x, block, el, opts.scale_rule, opts.eps, opts.nonfinite, threads=threads)
    if opts.scale_search != "mse":
        return q, None
    assert q.scale_codes is not None
    codes, scale, scale_codes = refine_mse(x, block, el, q.codes, q.scale_codes)
    best = QuantizedTensor(codes.view(el.dtype), scale, scale_codes, el, block, q.scale_rule)
    return best, q


def _keep_source_blocks(
    q: QuantizedTensor, raw: np.ndarray, s: np.ndarray, mask: np.ndarray, codes: np.ndarray
) -> QuantizedTensor:
    """``q`` with the blocks of ``mask`` (power-of-two source scales) taken from the source."""
    if not mask.any():
        return q
    full = expand_blocks(mask, q.shape, q.block)
    data = np.where(full, raw.view(np.uint8), q.codes).view(q.fmt.dtype)
    scale = np.where(mask, s, q.scale).astype(np.float32)
    assert q.scale_codes is not None
    scale_codes = np.where(mask, codes, q.scale_codes).astype(np.uint8)
    return QuantizedTensor(data, scale, scale_codes, q.fmt, q.block, q.scale_rule)


def requantize_step(ctx: StepContext, task: Task) -> dict[str, Any]:
    """Requantize one FP8 weight (to its own block, or the layout's fixed block); error sums."""
    opts = _fp8_options(ctx)
    w = task_weight(ctx, task)
    info = ctx.src.info(task.name)
    scale = load_scale(ctx.src_root, w, ctx.scale_file(w))
    out_block = opts.out_block(w.block)
    copy = out_block == w.block
    grid = task.outputs[1].shape
    scales = np.empty((math.prod(grid[:-2]), *grid[-2:]), np.float32)
    codes = np.empty(scales.shape, np.uint8)
    stats, copied = ErrorStats(), 0
    base_err = search_err = 0.0
    lowered = 0
    br = w.block[0]
    for lead, r0, r1 in slabs(info.shape, _STAT_ITEMSIZE, br):
        raw = ctx.src.read_rows(task.name, lead, r0, r1)
        s = scale[lead, r0 // br : -(-r1 // br)]
        x = dequantize_rows(raw, scale[lead], w.block, w.fmt, r0, ctx.threads)
        try:
            q, base = _requantize_slab(x, out_block, opts, w.fmt, ctx.threads)
        except NonFiniteError as exc:
            raise CheckpointError(
                ctx.src.path, f"non-finite value {exc.value} in block {exc.block}", task.name
            ) from None
        if copy:
            mask, scodes = ue8m0_codes(s)
            copied += int(np.count_nonzero(mask))
            q = _keep_source_blocks(q, raw, s, mask, scodes)
            if base is not None:
                base = _keep_source_blocks(base, raw, s, mask, scodes)
        approx = dequantize(q, np.float32, threads=ctx.threads)
        stats.update(x, approx, saturated_mask(x, q))
        if base is not None:
            base_err += _sse(dequantize(base, np.float32, threads=ctx.threads), x)
            search_err += _sse(approx, x)
            assert base.scale_codes is not None and q.scale_codes is not None
            lowered += int(np.count_nonzero(base.scale_codes != q.scale_codes))
        ctx.out.write(task.name, q.codes)
        g0, g1 = r0 // out_block[0], r0 // out_block[0] + q.scale.shape[-2]
        scales[lead, g0:g1] = q.scale
        assert q.scale_codes is not None
        codes[lead, g0:g1] = q.scale_codes
        ctx.tick(raw.nbytes)
    ctx.out.write(task.outputs[1].name, encode_scale(scales, codes, task.outputs[1].dtype))
    result = stats.result()
    row: dict[str, Any] = {
        "name": task.name,
        "shape": list(info.shape),
        "mode": "requantized",
        "blocks": int(scale.size),
        "blocks_copied": copied,
        **{k: result[k] for k in ("rel_frobenius", "max_abs_error", "cosine", "sqnr_db")},
        "saturated": result["saturated"],
        "flushed": result["flushed"],
        "err_sq": stats.err_sq,
        "ref_sq": stats.ref_sq,
    }
    if opts.scale_search == "mse":
        # both summed the same way, so an unchanged tensor shows exactly no gain
        row.update(rule_err_sq=base_err, search_err_sq=search_err, blocks_lowered=lowered)
    return row


def _quantize_named(
    ctx: StepContext,
    task: Task,
    x: np.ndarray,
    block: tuple[int, int],
    el: Any,
    eps: float,
    r0: int,
) -> QuantizedTensor:
    """``quantize`` of a relayout slab; a NaN/Inf value is one line naming the tensor and its
    block in the whole tensor (not the library's advice about a Python argument)."""
    try:
        return quantize(x, block, el, "rceil", eps, threads=ctx.threads)
    except NonFiniteError as exc:
        where = (r0 // block[0] + exc.block[-2], exc.block[-1])
        raise CheckpointError(
            ctx.src.path, f"non-finite value {exc.value} in block {where}", task.name
        ) from None


def relayout_step(ctx: StepContext, task: Task) -> dict[str, Any]:
    """Lossless relayout to the layout's fixed groups of a weight with power-of-two scales
    (checked value by value)."""
    opts = _fp8_options(ctx)
    w = task_weight(ctx, task)
    info = ctx.src.info(task.name)
    scale = load_scale(ctx.src_root, w, ctx.scale_file(w))
    out_block = opts.out_block(w.block)
    grid = task.outputs[1].shape
    codes = np.empty((math.prod(grid[:-2]), *grid[-2:]), np.uint8)
    el = element_fmt(w.fmt)
    br = w.block[0]
    eps_fallbacks, ref_sq = 0, 0.0
    for lead, r0, r1 in slabs(info.shape, _STAT_ITEMSIZE, br):
        raw = ctx.src.read_rows(task.name, lead, r0, r1)
        s = scale[lead, r0 // br : -(-r1 // br)]
        x = dequantize_rows(raw, scale[lead], w.block, w.fmt, r0, ctx.threads)
        ref_sq += float(np.sum(np.square(x, dtype=np.float64)))
        if opts.scales == "repeat":
            _, sc = ue8m0_codes(s)
            ctx.out.write(task.name, raw)
            codes[lead, r0:r1] = mx_relayout(sc, raw.shape, block=w.block, group=out_block[1])
        else:
            q = _quantize_named(ctx, task, x, out_block, el, opts.eps, r0)
            if not _same_values(q, x, ctx.threads):
                # a tiny group's eps-raised scale would round it: the exact scale instead
                eps_fallbacks += 1
                q = _quantize_named(ctx, task, x, out_block, el, 0.0, r0)
                if not _same_values(q, x, ctx.threads):
                    raise CheckpointError(
                        ctx.src.path, f"relayout of rows {r0}:{r1} would not be lossless", task.name
                    )
            assert q.scale_codes is not None
            ctx.out.write(task.name, q.codes)
            codes[lead, r0:r1] = q.scale_codes
        ctx.tick(raw.nbytes)
    ctx.out.write(task.outputs[1].name, codes.reshape(grid))
    return {
        "name": task.name,
        "shape": list(info.shape),
        "mode": f"lossless ({opts.scales})",
        "blocks": int(scale.size),
        "eps_fallback_slabs": eps_fallbacks,
        "rel_frobenius": 0.0,
        "max_abs_error": 0.0,
        "cosine": 1.0,
        "saturated": 0.0,
        "flushed": 0.0,
        "err_sq": 0.0,
        "ref_sq": ref_sq,
    }


def _sse(approx: np.ndarray, x: np.ndarray) -> float:
    d = approx.astype(np.float64) - x
    return float(np.sum(d * d))


def _same_values(q: QuantizedTensor, x: np.ndarray, threads: int | None) -> bool:
    return bool(np.array_equal(dequantize(q, np.float32, threads=threads), x))
