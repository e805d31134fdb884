"""The dequantize kernel: ``decode(code) * scale`` in float32, optionally rounded to bfloat16."""

from __future__ import annotations

from typing import Any

from numba import njit, prange, types
from numba.extending import overload

from ue8m0.kernels._bits import bf16_bits


def store(out: Any, b: int, r: int, c: int, y: Any) -> None:
    """Write float32 ``y`` to ``out`` (float32, or uint16 bfloat16 bits)."""
    raise NotImplementedError  # only callable from numba code


@overload(store, inline="always")
def _store_impl(out: Any, b: Any, r: Any, c: Any, y: Any) -> Any:
    if out.dtype == types.float32:

        def f32(out: Any, b: Any, r: Any, c: Any, y: Any) -> Any:
            out[b, r, c] = y

        return f32
    if out.dtype == types.uint16:

        def bf16(out: Any, b: Any, r: Any, c: Any, y: Any) -> Any:
            out[b, r, c] = bf16_bits(y)

        return bf16
    return None


@njit(parallel=True, cache=True)
def dequantize_kernel(
    codes: Any, scale: Any, table: Any, out: Any, br: int, bc: int, chunk: int
) -> None:
    """``out = table[codes] * scale`` block by block (scale repeated over each block)."""
    nb, rows, cols = codes.shape
    gr = (rows + br - 1) // br
    gc = (cols + bc - 1) // bc
    nchunks = (gc + chunk - 1) // chunk
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
            s = scale[b, i, j]
            for r in range(r0, r1):
                for c in range(c0, c1):
                    store(out, b, r, c, table[codes[b, r, c]] * s)
