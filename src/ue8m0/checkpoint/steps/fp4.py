"""DeepSeek-V4's packed FP4 routed experts: ``quantize_fp4`` (a high-precision expert weight ->
I8 packed E2M1 + F8_E8M0 scale per 32 inputs, V4's FP4 rule) and ``cast_fp4`` (packed FP4 ->
FP8 E4M3 with 128x128 F8_E8M0 tile scales, byte for byte as DeepSeek's own
``cast_e2m1fn_to_e4m3fn``, with every tile whose values change counted and measured)."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.checkpoint.options import Fp4RepackOptions
from ue8m0.checkpoint.pairs import load_scale_bytes
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.steps.context import StepContext, task_weight
from ue8m0.deepseek_v4 import TILE, Fp8Cast, cast_fp4_to_fp8_v4, quantize_fp4_v4
from ue8m0.errors import CheckpointError, InputError, NonFiniteError
from ue8m0.formats import FLOAT8_E4M3FN, decode_table
from ue8m0.fp4 import E2M1_VALUES, GROUP, unpack_fp4
from ue8m0.kernels._fp4 import square_sums_kernel
from ue8m0.metrics import ErrorStats

#: lossy tiles listed per tensor in the stats (all are counted)
LISTED_TILES = 20
_E4M3_VALUES = decode_table(FLOAT8_E4M3FN)
#: per packed byte: the sum of its two E2M1 values squared (exact in float32), and how many of
#: its two values are nonzero
_BYTE_SQUARES = (
    np.square(E2M1_VALUES)[np.arange(256) & 15] + np.square(E2M1_VALUES)[np.arange(256) >> 4]
).astype(np.float32)
_BYTE_NONZERO = (
    ((np.arange(256) & 7) != 0).astype(np.int64) + (((np.arange(256) >> 4) & 7) != 0)
).astype(np.uint8)


def quantize_fp4_step(ctx: StepContext, task: Task) -> None:
    """V4's FP4 rule row slab by row slab (its groups lie along a row)."""
    info = ctx.src.info(task.name)
    scale_out = task.outputs[1]
    grid = scale_out.shape
    scales = np.empty((math.prod(grid[:-2]), *grid[-2:]), np.uint8)
    for lead, r0, r1 in slabs(info.shape, info.itemsize, 1):
        with ctx.src.map_rows(task.name, lead, r0, r1) as x:
            try:
                packed, scale_bytes = quantize_fp4_v4(x, name=task.name)
            except NonFiniteError as exc:
                raise CheckpointError(
                    ctx.src.path, f"non-finite value {exc.value} in rows {r0}:{r1}", task.name
                ) from None
        ctx.out.write(task.name, packed)
        scales[lead, r0:r1] = scale_bytes
        ctx.tick((r1 - r0) * info.shape[-1] * info.itemsize)
    ctx.out.write(scale_out.name, scales.reshape(grid).view(ml_dtypes.float8_e8m0fnu))


def cast_fp4_step(ctx: StepContext, task: Task) -> dict[str, Any]:
    """Packed FP4 -> FP8 in slabs of whole 128-row tiles; the error against the FP4 values."""
    opts = ctx.options
    assert isinstance(opts, Fp4RepackOptions)
    w = task_weight(ctx, task)
    info = ctx.src.info(task.name)
    raw = load_scale_bytes(ctx.src_root, w, ctx.scale_file(w))
    scale = raw.reshape(-1, *raw.shape[-2:])
    tile_out = task.outputs[1]
    tile_grid = tile_out.shape
    tiles = np.empty((math.prod(tile_grid[:-2]), *tile_grid[-2:]), np.uint8)
    stats = ErrorStats()
    lossy: list[list[Any]] = []
    lossy_count = 0
    for lead, r0, r1 in slabs(info.shape, info.itemsize * 16, TILE):
        packed = ctx.src.read_rows(task.name, lead, r0, r1)
        s = scale[lead, r0:r1]
        try:
            cast = cast_fp4_to_fp8_v4(packed, s, name=task.name)
        except InputError as exc:
            raise CheckpointError(ctx.src.path, str(exc), task.name) from None
        t0 = r0 // TILE
        tiles[lead, t0 : t0 + cast.scale_bytes.shape[0]] = cast.scale_bytes
        for ti, tj in cast.lossy.indices:
            lossy_count += 1
            if len(lossy) < LISTED_TILES:
                err = float(cast.lossy.max_abs_error[ti, tj])
                lossy.append([lead, int(ti) + t0, int(tj), err])
        _add_cast_stats(stats, packed, s, cast)
        if opts.strict and lossy_count:
            _, ti, tj, err = lossy[0]
            raise CheckpointError(
                ctx.src.path,
                f"--strict: tile ({ti}, {tj}) would change (max abs error {err:.3g}): its group "
                "scales span more than 14 binades",
                task.name,
            )
        ctx.out.write(task.name, cast.codes)
        ctx.tick(packed.nbytes)
    ctx.out.write(tile_out.name, tiles.reshape(tile_grid).view(ml_dtypes.float8_e8m0fnu))
    result = stats.result()
    return {
        "name": task.name,
        "shape": [*tile_out.shape[:-2], info.shape[-2], 2 * info.shape[-1]],
        "mode": "fp4->fp8" + (" (lossy)" if lossy_count else " (exact)"),
        "blocks": int(tiles.size),
        "lossy_tiles": lossy_count,
        "lossy": lossy,
        **{k: result[k] for k in ("rel_frobenius", "max_abs_error", "cosine", "sqnr_db")},
        "saturated": result["saturated"],
        "flushed": result["flushed"],
        "err_sq": stats.err_sq,
        "ref_sq": stats.ref_sq,
    }


def _add_cast_stats(stats: ErrorStats, packed: np.ndarray, s: np.ndarray, cast: Fp8Cast) -> None:
    """The error sums of one slab of the cast without decoding it whole: outside the lossy
    tiles the FP8 values equal the FP4 ones, so their sums come from the FP4 codes alone (a
    32-group's sum of squared E2M1 values is exact in float32); the lossy tiles are decoded
    and measured element by element."""
    b = np.ascontiguousarray(packed.view(np.uint8))
    group_sq = np.empty(s.shape, np.float32)
    nonzero = square_sums_kernel(b, _BYTE_SQUARES, _BYTE_NONZERO, group_sq)
    ref_sq = float(
        np.sum(group_sq.astype(np.float64) * np.exp2(2.0 * (s.astype(np.float64) - 127)))
    )
    exact = ErrorStats(
        count=2 * b.size,
        nonzero=int(nonzero),
        ref_sq=ref_sq,
        approx_sq=ref_sq,
        dot=ref_sq,
    )
    codes = unpack_fp4(packed) if cast.lossy.count else b
    for ti, tj in cast.lossy.indices:
        rows = slice(int(ti) * TILE, (int(ti) + 1) * TILE)
        cols = slice(int(tj) * TILE, (int(tj) + 1) * TILE)
        ref = (
            E2M1_VALUES[codes[rows, cols]]
            * np.repeat(
                _exp2(s[rows, cols.start // GROUP : -(-cols.stop // GROUP)]), GROUP, axis=-1
            )[:, : codes[rows, cols].shape[1]]
        )
        approx = _E4M3_VALUES[cast.codes[rows, cols]] * _exp2(cast.scale_bytes[ti : ti + 1, tj])
        tile = ErrorStats()
        tile.update(ref, approx)
        # the tile was counted as exact above: replace its exact sums by its measured ones
        exact.approx_sq += tile.approx_sq - tile.ref_sq
        exact.dot += tile.dot - tile.ref_sq
        exact.err_sq += tile.err_sq
        exact.flushed += tile.flushed
        exact.max_abs = max(exact.max_abs, tile.max_abs)
        exact.worst_row_sqnr = min(exact.worst_row_sqnr, tile.worst_row_sqnr)
    stats.merge(exact)


def _exp2(scale_bytes: np.ndarray) -> np.ndarray:
    """float32 ``2**(b - 127)`` of UE8M0 bytes (0xFF: NaN)."""
    out = np.ldexp(np.float32(1), scale_bytes.astype(np.int32) - 127).astype(np.float32)
    out[scale_bytes == 0xFF] = np.nan
    return out
