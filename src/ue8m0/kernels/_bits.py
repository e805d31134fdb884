"""Scalar building blocks of the kernels: float32 bit casts, input widening, element rounding.

Everything works on float32 bit patterns held in int64 (numba's natural integer type), so the
kernels never materialise a float32 copy of the input. Inputs arrive as integer views:
``uint16`` = bfloat16, ``int16`` = float16 (a different integer type, so numba specialises the
widening at compile time), ``uint32`` = float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

F32_EXP = 0x7F800000
F32_ABS = 0x7FFFFFFF


@intrinsic
def _f32_bits(typingctx: Any, x: Any) -> Any:
    """The IEEE bit pattern of a float32, as uint32."""
    if x != types.float32:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx: Any, u: Any) -> Any:
    """The float32 whose bit pattern is the low 32 bits of the integer ``u``."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        v = args[0]
        width = sig.args[0].bitwidth
        if width > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif width < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


#: typed as Any for mypy: numba intrinsics are called with the value argument only
f32_bits: Any = _f32_bits
bits_f32: Any = _bits_f32


def widen(u: Any) -> int:
    """float32 bits (int64) of one input element (bf16 / fp16 / f32 integer view)."""
    raise NotImplementedError  # only callable from numba code


@overload(widen, inline="always")
def _widen_impl(u: Any) -> Any:
    if u == types.uint16:  # bfloat16: the top half of a float32

        def bf16(u: Any) -> Any:
            return np.int64(u) << 16

        return bf16
    if u == types.int16:  # float16

        def fp16(u: Any) -> Any:
            h = np.int64(u) & 0xFFFF
            sign = (h & 0x8000) << 16
            e = (h >> 10) & 0x1F
            m = h & 0x3FF
            if e == 0:
                if m == 0:
                    return sign
                return sign | (np.int64(f32_bits(np.float32(m))) - (24 << 23))
            if e == 31:
                return sign | F32_EXP | (m << 13)
            return sign | ((e + 112) << 23) | (m << 13)

        return fp16
    if u == types.uint32:

        def f32(u: Any) -> Any:
            return np.int64(u)

        return f32
    return None


@njit(cache=True, inline="always")
def round_code(
    y: Any, mbits: int, bias: int, code_max: int, sign_mask: int, nan_code: int, negzero: bool
) -> Any:
    """Element code of float32 ``y``: round to nearest even at ``mbits``, saturate to ±max.

    NaN gives ``nan_code`` (0 for formats without NaN); the sign of zero is kept unless
    ``negzero`` is False (FNUZ). Subnormals of the element format are rounded by adding a
    float32 constant whose ulp is the format's smallest subnormal (one exact RNE step).
    """
    yb: Any = np.int64(f32_bits(y))
    a = yb & F32_ABS
    if a > F32_EXP:
        return nan_code
    shift = 23 - mbits
    emin = 1 - bias
    if a < (emin + 127) << 23:
        magic_bits = (emin - mbits + 23 + 127) << 23
        code: Any = np.int64(f32_bits(bits_f32(a) + bits_f32(magic_bits))) - magic_bits
    else:
        rounded = (a + (1 << (shift - 1)) - 1 + ((a >> shift) & 1)) >> shift
        code = rounded - ((127 - bias) << mbits)
    code = min(code, code_max)
    if yb >> 31 and (negzero or code != 0):
        code |= sign_mask
    return code


@njit(cache=True, inline="always")
def bf16_bits(y: Any) -> Any:
    """bfloat16 bits of float32 ``y``, rounded to nearest even (NaN: sign | 0x7FC0, as ml_dtypes)."""
    b = np.int64(f32_bits(y))
    if (b & F32_ABS) > F32_EXP:
        return ((b >> 16) & 0x8000) | 0x7FC0
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16
