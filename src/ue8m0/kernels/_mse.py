"""The MSE scale search (:mod:`ue8m0.search`) compiled, for the report's fast path.

:func:`refine_mse_fast` (``ue8m0.kernels.refine_mse``) does what :func:`ue8m0.search.refine_mse` (the oracle) does, in place
and in one compiled pass per block: for each block whose scale byte ``hi`` is usable (not 0,
not NaN), encode the block with the byte below (``lo = hi - 1``, multiplier ``2**(127 - lo)``
in float32, the element rounding of the kernels), and keep it when its float64 sum of squared
errors against ``x`` is smaller than ``hi``'s (ties keep ``hi``).

The squared error of each element is the oracle's (``decode(code) · 2**(byte - 127) - x`` in
float64); the block's sum adds them in row order where the oracle's ``einsum`` may not. The
choice can therefore differ from the oracle's only in a near-tie: a block whose two exact sums
agree to float64 rounding (1e-12 relative), where the oracle's rounded sums may tie (it keeps
``hi``) and these do not, or the other way round; both choices then err the same.
``tests/test_report_fast.py`` compares codes and scale bytes with the oracle's exactly in every
other block, and checks the near-ties with exact (``math.fsum``) sums. Such ties occur in
constructed data (equal errors by symmetry), not in the tensors of the report's tests.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.blocks import resolve_block
from ue8m0.formats import UE8M0, ElementFormat, decode_table
from ue8m0.kernels._bits import round_code, unpack
from ue8m0.reference import decode_scale_bytes


@njit(cache=True, inline="always")
def _block_sse(x: Any, codes: Any, r0: int, r1: int, c0: int, c1: int, table: Any, s: float) -> Any:
    total = 0.0
    for r in range(r0, r1):
        for c in range(c0, c1):
            e = table[codes[r, c]] * s - np.float64(x[r, c])
            total += e * e
    return total


@njit(cache=True, inline="always")
def _lo_sse(
    x: Any, r0: int, r1: int, c0: int, c1: int, m: Any, table: Any, s: float, p: Any
) -> Any:
    total = 0.0
    for r in range(r0, r1):
        for c in range(c0, c1):
            e = table[round_code(x[r, c] * m, p)] * s - np.float64(x[r, c])
            total += e * e
    return total


@njit(parallel=True, cache=True)
def refine_mse_kernel(
    x: Any, codes: Any, sbytes: Any, br: int, bc: int, table: Any, nan_byte: int, params: Any
) -> int:
    """In place: move each usable block of ``codes``/``sbytes`` to the byte below when that
    lowers its squared error against ``x`` (2-D float32). Returns how many blocks moved."""
    p = unpack(params)
    nrows, ncols = x.shape
    gr, gc = sbytes.shape
    moved = np.zeros(gr, dtype=np.int64)
    for i in prange(gr):
        r0 = i * br
        r1 = min(nrows, r0 + br)
        for j in range(gc):
            hi = np.int64(sbytes[i, j])
            if hi == 0 or hi == nan_byte:
                continue
            lo = hi - 1
            c0 = j * bc
            c1 = min(ncols, c0 + bc)
            m = np.float32(2.0 ** (127 - lo))
            s_hi = 2.0 ** (hi - 127)
            s_lo = 2.0 ** (lo - 127)
            if _lo_sse(x, r0, r1, c0, c1, m, table, s_lo, p) < _block_sse(
                x, codes, r0, r1, c0, c1, table, s_hi
            ):
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        codes[r, c] = round_code(x[r, c] * m, p)
                sbytes[i, j] = lo
                moved[i] += 1
    return int(moved.sum())


@functools.cache
def _table(fmt: ElementFormat) -> np.ndarray:
    return decode_table(fmt).astype(np.float64)


def refine_mse_fast(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    codes: np.ndarray,
    scale_codes: np.ndarray,
    params: np.ndarray,
) -> np.ndarray:
    """:func:`ue8m0.search.refine_mse` for a 2-D float32 ``x``, updating ``codes`` (uint8 or
    ``fmt``'s dtype) and ``scale_codes`` in place; returns the new float32 scales. ``params``:
    ``fmt``'s rounding constants (:func:`ue8m0.kernels._bits.element_params`)."""
    br, bc = resolve_block(block, x.shape)
    refine_mse_kernel(
        x, codes.view(np.uint8), scale_codes, br, bc, _table(fmt), UE8M0.nan_code, params
    )
    return decode_scale_bytes(scale_codes)
