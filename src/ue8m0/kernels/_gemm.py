"""The ``hopper`` GEMM kernel: :func:`ue8m0.gemm` with ``mode="hopper"``, compiled.

Same arithmetic as the numpy oracle in :mod:`ue8m0.gemm` (tests compare them bit for bit): per
step of ``step`` elements of K, the accumulator and the exact element products are truncated to
multiples of ``2**(E - align)`` (``E`` the largest exponent sum, or the accumulator's exponent),
summed exactly (as int64: every addend is below 2**16 quanta), and the sum is cut to ``align``
fraction bits;
every ``promote_units`` steps it is rounded to float32, times the float32 scale product, added
to the float32 result. One output element per inner loop, rows of A in parallel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.kernels._bits import bits_f64, f64_bits

#: exponent given to zeros (far below any product of two finite FP8 values); the oracle's too
ZERO_EXPONENT = -(1 << 20)


@njit(cache=True, inline="always")
def _exponent(x: float) -> int:
    """``floor(log2 |x|)`` of a normal float64 (zero: ``ZERO_EXPONENT``)."""
    if x == 0.0:
        return ZERO_EXPONENT
    return ((f64_bits(x) >> 52) & 0x7FF) - 1023


@njit(cache=True, inline="always")
def _pow2(n: int) -> float:
    """``2.0**n`` for a normal exponent ``n``."""
    return bits_f64(np.int64(n + 1023) << 52)


@njit(cache=True, inline="always")
def _truncate(x: float, bits: int) -> float:
    """``x`` cut to ``bits`` fraction bits, toward zero (a normal float64 or zero)."""
    return bits_f64(f64_bits(x) & -(np.int64(1) << (52 - bits)))


#: rows of B per tile: their values and exponents (K * 6 bytes each) stay in L2 while every
#: row of A passes over them
B_TILE = 32


@njit(parallel=True, cache=True, nogil=True)
def hopper_gemm_kernel(
    av: Any, bv: Any, ea: Any, eb: Any, sa: Any, sb: Any, promote_units: int, align: int, out: Any
) -> None:  # pragma: no cover - compiled; covered through ue8m0.gemm
    """``av`` (M, units, step) and ``bv`` (N, units, step) element values (float32, all finite:
    the caller sends NaN/Inf inputs to the oracle), ``ea`` / ``eb`` their exponents (int32),
    ``sa`` (M, units) / ``sb`` (N, units) float32 scales; writes ``out`` (M, N) float32."""
    m, units, step = av.shape
    n = bv.shape[0]
    for j0 in range(0, n, B_TILE):
        for i in prange(m):
            for j in range(j0, min(n, j0 + B_TILE)):
                c = np.float32(0.0)
                acc = 0.0
                for u in range(units):
                    top = _exponent(acc)
                    for k in range(step):
                        e = ea[i, u, k] + eb[j, u, k]
                        if e > top:
                            top = e
                    if top <= ZERO_EXPONENT // 2:
                        top = 0  # all addends zero: any quantum will do
                    inv = _pow2(align - top)
                    total = np.int64(acc * inv)  # truncates toward zero: finite inputs only
                    for k in range(step):
                        p = np.float64(av[i, u, k]) * np.float64(bv[j, u, k])  # exact
                        total += np.int64(p * inv)
                    acc = _truncate(np.float64(total) * _pow2(top - align), align)
                    if (u + 1) % promote_units == 0 or u == units - 1:
                        scale = sa[i, u] * sb[j, u]  # float32 product, rounded once
                        c += np.float32(acc) * scale
                        acc = 0.0
                out[i, j] = c
