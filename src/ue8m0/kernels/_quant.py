"""The quantize kernel: one pass per block for the amax, one to encode, blocks in parallel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.kernels._bits import (
    F32_EXP,
    amax32,
    bits_f32,
    f32_bits,
    mag,
    round_code,
    round_code_finite,
    u_add,
    u_and,
    u_shl,
    u_shr,
    u_sub,
    unpack,
    widen,
)
from ue8m0.kernels._tasks import next_task, prefetch_row, task_grid, task_span
from ue8m0.policies import ScaleRule

# rule ids as the kernels know them (compile-time constants derived from the enum)
RCEIL, LOG2, FLOOR, CEIL, EVEN, FP32, FP32_DIV = (
    r.kernel_id
    for r in (
        ScaleRule.RCEIL,
        ScaleRule.LOG2,
        ScaleRule.FLOOR,
        ScaleRule.CEIL,
        ScaleRule.EVEN,
        ScaleRule.FP32,
        ScaleRule.FP32_DIV,
    )
)


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
def byte_value(byte: Any) -> Any:
    """float32 ``2**(byte - 127)`` of a UE8M0 byte in [0, 254] (byte 0 is a subnormal)."""
    b = np.uint32(byte)
    return bits_f32(u_shl(b, np.uint32(23)) if b != np.uint32(0) else np.uint32(0x00400000))


@njit(cache=True, inline="always")
def rceil_byte(a: Any, fmax: Any) -> Any:
    """The ``rceil`` byte in 32-bit integer code (vectorises; same as :func:`scale_byte`)."""
    rb = f32_bits(a / fmax)
    exp = u_shr(rb, np.uint32(23))
    mant = u_and(rb, np.uint32(0x7FFFFF))
    normal = min(u_add(exp, np.uint32(mant != np.uint32(0))), np.uint32(254))
    return normal if exp != np.uint32(0) else np.uint32(mant > np.uint32(0x400000))


@njit(cache=True, inline="always")
def floor_byte(a: Any, emax: Any) -> Any:
    """The ``floor`` byte in 32-bit integer code (vectorises; same as :func:`scale_byte`)."""
    exp = u_shr(f32_bits(a), np.uint32(23))
    return u_sub(exp, emax) if exp > emax else np.uint32(0)


@njit(cache=True, inline="always")
def block_scales(
    amax: Any,
    eps: Any,
    rule: int,
    fmax: Any,
    emax: int,
    mbits: int,
    scale_row: Any,
    byte_row: Any,
    mult: Any,
) -> int:
    """Scales, bytes and element multipliers of a run of blocks from their amax bits.

    One loop per rule (vectorised for ``rceil`` and ``floor``). Blocks whose amax is not
    finite get scale NaN, byte 0xFF and multiplier 1; returns how many there are.
    """
    n = amax.shape[0]
    if rule == FP32:
        for jj in range(n):
            s = max(bits_f32(amax[jj]), eps) / fmax
            scale_row[jj] = s
            mult[jj] = np.float32(0.0) if s == 0 else np.float32(1.0) / s
    elif rule == FP32_DIV:  # mult is the divisor (inf for a zero scale: zero elements)
        for jj in range(n):
            s = max(bits_f32(amax[jj]), eps) / fmax
            scale_row[jj] = s
            mult[jj] = np.float32(np.inf) if s == 0 else s
    else:
        if rule == RCEIL:
            for jj in range(n):
                byte_row[jj] = rceil_byte(max(bits_f32(amax[jj]), eps), fmax)
        elif rule == FLOOR:
            e = np.uint32(emax)
            for jj in range(n):
                byte_row[jj] = floor_byte(max(bits_f32(amax[jj]), eps), e)
        else:
            for jj in range(n):
                byte_row[jj] = scale_byte(max(bits_f32(amax[jj]), eps), rule, fmax, emax, mbits)
        for jj in range(n):
            byte = np.uint32(byte_row[jj])
            scale_row[jj] = byte_value(byte)
            mult[jj] = byte_value(u_sub(np.uint32(254), byte))
    nbad = 0
    for jj in range(n):
        if amax[jj] >= F32_EXP:
            nbad += 1
            byte_row[jj] = 255
            scale_row[jj] = np.float32(np.nan)
            mult[jj] = np.float32(1.0)
    return nbad


@njit(cache=True, inline="always")
def run_amax(seg: Any, n: int) -> Any:
    """float32 bits (uint32) of the largest magnitude of ``seg[:n]``.

    Taken on the sign-cleared input bits in the input's own lanes (16-bit for bf16/fp16: twice
    the lanes of float32), widened once. Common block widths get a constant trip count, which
    LLVM unrolls into whole vectors with no remainder loop.
    """
    top = u_sub(seg[0], seg[0])  # zero of the input's integer type
    if n == 128:
        for c in range(128):
            top = max(top, mag(seg[c]))
    else:
        for c in range(n):
            top = max(top, mag(seg[c]))
    return widen(top)


@njit(cache=True, inline="always")
def run_encode(seg: Any, dst: Any, n: int, m: Any, simple: bool, divide: bool, p: Any) -> None:
    """``dst[:n]`` = element codes of ``seg[:n] * m``, or ``seg[:n] / m`` when ``divide``
    (constant trip counts for 32 and 128)."""
    if divide:
        for c in range(n):
            dst[c] = round_code(bits_f32(widen(seg[c])) / m, p)
    elif simple:
        if n == 128:
            for c in range(128):
                dst[c] = round_code_finite(bits_f32(widen(seg[c])) * m, p)
        else:
            for c in range(n):
                dst[c] = round_code_finite(bits_f32(widen(seg[c])) * m, p)
    else:
        for c in range(n):
            dst[c] = round_code(bits_f32(widen(seg[c])) * m, p)


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
    p: Any,
) -> int:
    """Quantize ``x`` (batch, rows, cols) into ``codes``/``scale``/``sbytes``; count bad blocks.

    A task is ``chunk`` consecutive blocks of one block row, read row by row (long contiguous
    runs the prefetcher follows): pass 1 takes each block's amax into a per-task scratch, then
    the scales and multipliers are computed, and pass 2 encodes the rows again (chunks are sized
    in Python to stay in L2). ``p`` holds the element format's
    constants (:func:`~ue8m0.kernels._bits.element_params`). A block holding NaN/Inf gets scale
    NaN, byte 0xFF and NaN-code elements.
    """
    # power-of-two multipliers keep finite elements finite; then only the sign of zero
    # (kept unless the format is FNUZ) needs more than the plain rounding
    simple = rule != FP32 and rule != FP32_DIV and p[7] != 0
    divide = rule == FP32_DIV
    p = unpack(p)
    ntasks = task_grid(x.shape, br, bc, chunk)[3]
    bad = np.zeros(ntasks, dtype=np.int64)  # per task (no parfor reduction)
    for task in prange(ntasks):
        b, i, j0, nj, r0, r1, ca, width = task_span(task, x.shape, br, bc, chunk)
        nxt = next_task(x.shape, task, ntasks, br, bc, chunk)
        # column-wise running max of the magnitude bits over the task's rows (one streaming
        # loop per row), reduced to one amax per block once per task
        acc = np.zeros(width, dtype=x.dtype)
        for r in range(r0, r1):
            row = x[b, r, ca : ca + width]  # slices: loops from 0 vectorise (no wraparound)
            for c in range(width):
                acc[c] = max(acc[c], mag(row[c]))
        amax = np.empty(nj, dtype=np.uint32)
        for jj in range(nj):
            seg = acc[jj * bc : jj * bc + bc]
            amax[jj] = run_amax(seg, seg.shape[0])
        mult = np.empty(nj, dtype=np.float32)
        scale_row = scale[b, i, j0 : j0 + nj]
        byte_row = sbytes[b, i, j0 : j0 + nj]
        nbad = block_scales(amax, eps, rule, fmax, emax, mbits, scale_row, byte_row, mult)
        for r in range(r0, r1):
            prefetch_row(x, nxt, r - r0, width)
            row = x[b, r, ca : ca + width]
            out = codes[b, r, ca : ca + width]
            for jj in range(nj):
                seg = row[jj * bc : jj * bc + bc]
                dst = out[jj * bc : jj * bc + bc]
                run_encode(seg, dst, seg.shape[0], mult[jj], simple, divide, p)
        bad[task] = nbad
        if nbad:
            for jj in range(nj):
                if amax[jj] >= F32_EXP:
                    codes[b, r0:r1, ca + jj * bc : ca + jj * bc + bc] = p[6]  # the NaN code
    return bad.sum()


@njit(parallel=True, cache=True)
def quantize_groups_kernel(
    x: Any,
    codes: Any,
    scale: Any,
    sbytes: Any,
    chunk: int,
    rule: int,
    eps: Any,
    fmax: Any,
    emax: int,
    mbits: int,
    p: Any,
) -> int:
    """:func:`quantize_kernel` for one-row blocks of a contiguous input: ``x`` is (rows, groups, bc).

    Every block is ``x[r, j]``, a whole contiguous group (no partial blocks), so a task (``chunk``
    groups of one row) takes all its amaxes in one pass, all scales in one vectorised pass
    (:func:`block_scales`) and encodes in a third, with no per-block slicing. For ``bc == 32``
    a block's amax is one 32-lane load and a vector reduction (:func:`amax32`; a loop of 32
    gets unrolled into a scalar chain) and its encode two full float32 vectors.
    """
    simple = rule != FP32 and rule != FP32_DIV and p[7] != 0
    divide = rule == FP32_DIV
    p = unpack(p)
    nrows, ngroups, bc = x.shape
    nchunks = (ngroups + chunk - 1) // chunk
    ntasks = nrows * nchunks
    bad = np.zeros(ntasks, dtype=np.int64)
    for task in prange(ntasks):
        r = task // nchunks
        j0 = (task - r * nchunks) * chunk
        nj = min(j0 + chunk, ngroups) - j0
        xr = x[r]
        cr = codes[r]
        amax = np.empty(nj, dtype=np.uint32)
        zero = u_sub(x[r, 0, 0], x[r, 0, 0])
        if bc == 32:
            for jj in range(nj):
                amax[jj] = widen(amax32(xr[j0 + jj]))
        else:
            for jj in range(nj):
                seg = xr[j0 + jj]
                top = zero
                for c in range(bc):
                    top = max(top, mag(seg[c]))
                amax[jj] = widen(top)
        mult = np.empty(nj, dtype=np.float32)
        scale_row = scale[r, j0 : j0 + nj]
        byte_row = sbytes[r, j0 : j0 + nj]
        nbad = block_scales(amax, eps, rule, fmax, emax, mbits, scale_row, byte_row, mult)
        if simple and bc == 32:
            for jj in range(nj):
                seg = xr[j0 + jj]
                dst = cr[j0 + jj]
                m = mult[jj]
                for c in range(32):
                    dst[c] = round_code_finite(bits_f32(widen(seg[c])) * m, p)
        else:
            for jj in range(nj):
                run_encode(xr[j0 + jj], cr[j0 + jj], bc, mult[jj], simple, divide, p)
        bad[task] = nbad
        if nbad:
            for jj in range(nj):
                if amax[jj] >= F32_EXP:
                    codes[r, j0 + jj, :] = p[6]  # the NaN code
    return bad.sum()
