"""The quantize kernel: one pass per block for the amax, one to encode, blocks in parallel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.kernels._bits import F32_ABS, F32_EXP, bits_f32, f32_bits, round_code, widen

# rule ids, in the order of ScaleRule
RCEIL, LOG2, FLOOR, CEIL, EVEN, FP32 = range(6)


@njit(cache=True)
def scale_byte(a: Any, rule: int, fmax: Any, emax: int, mbits: int) -> int:
    """UE8M0 byte of a block with ``a = max(amax, eps)`` (float32, finite), per ScaleRule."""
    exponent: Any
    if rule == RCEIL:
        rb = np.int64(f32_bits(a / fmax))
        exp = rb >> 23
        mant = rb & 0x7FFFFF
        if exp == 0:
            exponent = (1 if mant > 0x400000 else 0) - 127
        else:
            exponent = exp + (1 if mant != 0 else 0) - 127
    elif rule == LOG2:
        r = np.float64(a / fmax)
        if r == 0.0:
            exponent = -127
        else:
            exponent = np.int64(math.ceil(np.float32(math.log2(r))))
    else:
        ab = np.int64(f32_bits(a))
        if rule == FLOOR:
            exponent = (ab >> 23) - 127 - emax
        elif rule == CEIL:
            exponent = (ab >> 23) - 127 + (1 if (ab & 0x7FFFFF) != 0 else 0) - emax
        else:  # EVEN
            rounded = (ab + (1 << (23 - mbits - 1))) & F32_EXP
            exponent = (rounded >> 23) - 127 - emax
    return min(max(exponent, -127), 127) + 127


@njit(cache=True, inline="always")
def pow2(exponent: int) -> Any:
    """float32 ``2**exponent`` for exponent in [-127, 127] (-127 is a float32 subnormal)."""
    if exponent == -127:
        return bits_f32(np.int64(0x00400000))
    return bits_f32(np.int64(exponent + 127) << 23)


@njit(parallel=True, cache=True)
def quantize_kernel(
    x: Any,
    codes: Any,
    scale: Any,
    sbytes: Any,
    br: int,
    bc: int,
    chunk: int,
    rule: int,
    eps: Any,
    fmax: Any,
    emax: int,
    mbits: int,
    bias: int,
    code_max: int,
    sign_mask: int,
    nan_code: int,
    negzero: bool,
) -> int:
    """Quantize ``x`` (batch, rows, cols) into ``codes``/``scale``/``sbytes``; count bad blocks.

    Work is split into tasks of ``chunk`` consecutive blocks of one block row, in parallel.
    A block holding NaN/Inf gets scale NaN, byte 0xFF and ``nan_code`` elements.
    """
    nb, rows, cols = x.shape
    gr = (rows + br - 1) // br
    gc = (cols + bc - 1) // bc
    nchunks = (gc + chunk - 1) // chunk
    bad = 0
    for task in prange(nb * gr * nchunks):
        b = task // (gr * nchunks)
        rest = task - b * gr * nchunks
        i = rest // nchunks
        k = rest - i * nchunks
        r0 = i * br
        r1 = min(r0 + br, rows)
        for j in range(k * chunk, min(k * chunk + chunk, gc)):
            c0 = j * bc
            c1 = min(c0 + bc, cols)
            amax: Any = np.int64(0)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    amax = max(amax, widen(x[b, r, c]) & F32_ABS)
            if amax >= F32_EXP:
                bad += 1
                sbytes[b, i, j] = 255
                scale[b, i, j] = np.float32(np.nan)
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        codes[b, r, c] = nan_code
                continue
            a = max(bits_f32(amax), eps)
            if rule == FP32:
                s = a / fmax
                mult = np.float32(0.0) if s == 0 else np.float32(1.0) / s
                scale[b, i, j] = s
            else:
                byte = scale_byte(a, rule, fmax, emax, mbits)
                sbytes[b, i, j] = byte
                scale[b, i, j] = pow2(byte - 127)
                mult = pow2(127 - byte)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    y = bits_f32(widen(x[b, r, c])) * mult
                    codes[b, r, c] = round_code(
                        y, mbits, bias, code_max, sign_mask, nan_code, negzero
                    )
    return bad
