"""Kernels of packed FP4 (E2M1, one UE8M0 byte per 32 inputs): decode, and DeepSeek-V4's cast
to FP8 with its per-tile loss check. Bit-identical to the oracles in :mod:`ue8m0.fp4` and
:mod:`ue8m0.deepseek_v4` (the tests compare them); callers pass validated uint8 arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.kernels._bits import bf16_bits, bits_f32, u_shl

GROUP = 32
TILE = 128
NAN_BITS = 0x7FC00000


@njit(cache=True, inline="always")
def _scale_f32(byte: Any) -> Any:
    """float32 ``2**(byte - 127)``; byte 0 is the subnormal 2**-127, 0xFF is NaN."""
    b = np.uint32(byte)
    if b == np.uint32(255):
        return bits_f32(np.uint32(NAN_BITS))
    return bits_f32(u_shl(b, np.uint32(23)) if b != np.uint32(0) else np.uint32(0x00400000))


@njit(cache=True, parallel=True)
def dequantize_fp4_kernel(p: Any, s: Any, values: Any, out: Any, bf16: bool) -> None:
    """``out[r, j] = values[code] * 2**(s[r, j // 32] - 127)`` from packed ``p [rows, in/2]``
    (low nibble first). ``out`` is float32, or (``bf16``) uint16 bfloat16 bits, rounded to even."""
    rows, half = p.shape
    for r in prange(rows):
        for g in range(half // (GROUP // 2)):
            sc = _scale_f32(s[r, g])
            for i in range(g * (GROUP // 2), (g + 1) * (GROUP // 2)):
                byte = p[r, i]
                lo = values[byte & 0x0F] * sc
                hi = values[byte >> 4] * sc
                if bf16:
                    out[r, 2 * i] = bf16_bits(lo)
                    out[r, 2 * i + 1] = bf16_bits(hi)
                else:
                    out[r, 2 * i] = lo
                    out[r, 2 * i + 1] = hi


@njit(cache=True, parallel=True)
def cast_fp4_to_fp8_kernel(
    p: Any,
    s: Any,
    table: Any,
    d_low: int,
    e4m3: Any,
    fp4: Any,
    suspect_spread: int,
    max_offset_bits: int,
    codes: Any,
    tile_bytes: Any,
    errors: Any,
) -> None:
    """DeepSeek-V4's FP4 -> FP8 cast, one row of 128x128 tiles per task.

    ``table[d - d_low, byte]`` holds the two e4m3 codes of a packed byte at offset exponent
    ``d`` (low element in the low byte); ``codes`` is the uint16 view of the ``[out, in]``
    output. Tiles whose group bytes span more than ``suspect_spread`` binades, or whose top
    byte is below ``max_offset_bits``, get their largest ``|e4m3[c] * S - fp4[n] * s_group|``
    (float64, exact) in ``errors``; every other tile is exact by construction (0.0). A tile
    with a 0xFF byte is written as DeepSeek's CPU cast writes it: byte 0xFF, codes 0x7F.
    """
    out = p.shape[0]
    ngroups = s.shape[1]
    tr, tc = tile_bytes.shape
    per = TILE // GROUP
    for ti in prange(tr):  # a row of tiles per task: rows are streamed in memory order
        r0, r1 = ti * TILE, min(out, (ti + 1) * TILE)
        bmax = np.zeros(tc, dtype=np.int64)
        bmin = np.full(tc, 255, dtype=np.int64)
        for r in range(r0, r1):
            for g in range(ngroups):
                b = int(s[r, g])
                bmax[g // per] = max(bmax[g // per], b)
                bmin[g // per] = min(bmin[g // per], b)
        check = np.zeros(tc, dtype=np.bool_)
        stored = np.zeros(tc, dtype=np.float64)
        worst = np.zeros(tc, dtype=np.float64)
        for tj in range(tc):
            tb = 255 if bmax[tj] == 255 else max(bmax[tj] - max_offset_bits, 0)
            tile_bytes[ti, tj] = tb
            check[tj] = bmax[tj] - bmin[tj] > suspect_spread or bmax[tj] < max_offset_bits
            stored[tj] = math.ldexp(1.0, tb - 127)
        for r in range(r0, r1):
            for g in range(ngroups):
                tj = g // per
                b = int(s[r, g])
                if bmax[tj] == 255:  # DeepSeek's CPU cast of a NaN tile
                    for i in range(g * (GROUP // 2), (g + 1) * (GROUP // 2)):
                        codes[r, i] = np.uint16(0x7F7F)
                    continue
                trow = table[max(b - bmax[tj] + max_offset_bits, d_low) - d_low]
                for i in range(g * (GROUP // 2), (g + 1) * (GROUP // 2)):
                    codes[r, i] = trow[p[r, i]]
                if check[tj]:
                    sg = math.ldexp(1.0, b - 127)
                    for i in range(g * (GROUP // 2), (g + 1) * (GROUP // 2)):
                        byte = p[r, i]
                        pair = trow[byte]
                        lo = abs(e4m3[pair & 0xFF] * stored[tj] - fp4[byte & 0x0F] * sg)
                        hi = abs(e4m3[pair >> 8] * stored[tj] - fp4[byte >> 4] * sg)
                        worst[tj] = max(worst[tj], lo, hi)
        for tj in range(tc):
            errors[ti, tj] = np.nan if bmax[tj] == 255 else worst[tj]


@njit(cache=True)
def square_sums_kernel(p: Any, table: Any, nonzero: Any, out: Any) -> int:
    """Per 32-group of packed FP4 ``p [rows, in/2]``: ``out[r, g]`` = the sum of the squared
    E2M1 values (``table[byte]``: both nibbles' squares, exact in float32, as is every group
    sum); returns how many values are nonzero (``nonzero[byte]``: 0, 1 or 2)."""
    rows, half = p.shape
    count = 0
    for r in range(rows):
        for g in range(half // (GROUP // 2)):
            acc = np.float32(0.0)
            for i in range(g * (GROUP // 2), (g + 1) * (GROUP // 2)):
                acc += table[p[r, i]]
                count += nonzero[p[r, i]]
            out[r, g] = acc
    return count
