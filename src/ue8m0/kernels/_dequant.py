"""The dequantize kernel: ``decode(code) * scale`` in float32, optionally rounded to bfloat16."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ue8m0.kernels._bits import (
    bf16_bits,
    decode,
    decode_scaled,
    f32_bits,
    u_and,
    u_shr,
    unpack_decode,
)
from ue8m0.kernels._tasks import next_task, prefetch_row, task_grid, task_span


def store(out: Any, k: int, y: Any) -> None:
    """``out[k] = y`` for float32 ``y``: as is (float32 ``out``) or as bfloat16 bits (uint16)."""
    raise NotImplementedError  # only callable from numba code


@overload(store, inline="always")
def _store_impl(out: Any, k: Any, y: Any) -> Any:
    if out.dtype == types.float32:

        def f32(out: Any, k: Any, y: Any) -> Any:
            out[k] = y

        return f32
    if out.dtype == types.uint16:

        def bf16(out: Any, k: Any, y: Any) -> Any:
            out[k] = bf16_bits(y)

        return bf16
    return None


def store_exact(out: Any, k: int, y: Any) -> None:
    """:func:`store` of a ``y`` known to be a bfloat16 value (or Inf/NaN): no rounding needed."""
    raise NotImplementedError  # only callable from numba code


@overload(store_exact, inline="always")
def _store_exact_impl(out: Any, k: Any, y: Any) -> Any:
    if out.dtype == types.float32:

        def f32(out: Any, k: Any, y: Any) -> Any:
            out[k] = y

        return f32
    if out.dtype == types.uint16:

        def bf16(out: Any, k: Any, y: Any) -> Any:
            out[k] = np.uint16(u_shr(f32_bits(y), np.uint32(16)))

        return bf16
    return None


@njit(cache=True, inline="always")
def exact_scale(s: Any, q: Any) -> bool:
    """Whether ``decode(code) * s`` is a bfloat16 value for every code (or Inf/NaN as is).

    True for a finite power-of-two ``s`` large enough that the smallest subnormal code stays a
    normal float32: the product then carries the code's few significant bits exactly, so its
    low 16 bits are zero, and a NaN code stays the positive quiet NaN ``0x7FC00000``.
    """
    sb = f32_bits(s)
    e = u_and(u_shr(sb, np.uint32(23)), np.uint32(0xFF))
    return u_and(sb, np.uint32(0x7FFFFF)) == np.uint32(0) and e >= q[11] and e <= np.uint32(254)


@njit(parallel=True, cache=True)
def dequantize_kernel(
    codes: Any, scale: Any, q: Any, out: Any, br: int, bc: int, chunk: int
) -> None:
    """``out = decode(codes) * scale`` block by block (scale repeated over each block).

    Tasks are ``chunk`` blocks of a block row, walked row by row; codes are decoded with
    integer arithmetic (:func:`~ue8m0.kernels._bits.decode`, constants ``q``), which
    vectorises where a table lookup would not; blocks whose power-of-two scale keeps every
    product exact take :func:`~ue8m0.kernels._bits.decode_scaled` (two exact multiplies) and
    store without rounding.
    """
    q = unpack_decode(q)
    ntasks = task_grid(codes.shape, br, bc, chunk)[3]
    for task in prange(ntasks):
        b, i, j0, nj, r0, r1, ca, width = task_span(task, codes.shape, br, bc, chunk)
        nxt = next_task(codes.shape, task, ntasks, br, bc, chunk)
        for r in range(r0, r1):
            prefetch_row(codes, nxt, r - r0, width)
            src = codes[b, r, ca : ca + width]
            dst = out[b, r, ca : ca + width]
            for jj in range(nj):
                seg = src[jj * bc : jj * bc + bc]
                o = dst[jj * bc : jj * bc + bc]
                s = scale[b, i, j0 + jj]
                if exact_scale(s, q):
                    for c in range(seg.shape[0]):
                        store_exact(o, c, decode_scaled(seg[c], q, s))
                else:
                    for c in range(seg.shape[0]):
                        store(o, c, decode(seg[c], q) * s)
