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


def _binop(op: str) -> Any:
    """An intrinsic ``op(a, b)`` on two integers of one type that keeps the type.

    numba widens all integer arithmetic to 64 bits; 32-bit lanes vectorise twice as wide.
    """

    @intrinsic
    def binop(typingctx: Any, a: Any, b: Any) -> Any:
        if not isinstance(a, types.Integer) or a != b:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    return binop


u_and: Any = _binop("and_")
u_or: Any = _binop("or_")
u_add: Any = _binop("add")
u_sub: Any = _binop("sub")
u_shl: Any = _binop("shl")
u_shr: Any = _binop("lshr")


def widen(u: Any) -> Any:
    """float32 bits (uint32) of one input element (bf16 / fp16 / f32 integer view)."""
    raise NotImplementedError  # only callable from numba code


@overload(widen, inline="always")
def _widen_impl(u: Any) -> Any:
    if u == types.uint16:  # bfloat16: the top half of a float32

        def bf16(u: Any) -> Any:
            return u_shl(np.uint32(u), np.uint32(16))

        return bf16
    if u == types.int16:  # float16

        def fp16(u: Any) -> Any:
            h = np.int64(u) & 0xFFFF
            sign = (h & 0x8000) << 16
            e = (h >> 10) & 0x1F
            m = h & 0x3FF
            if e == 0:
                if m == 0:
                    return np.uint32(sign)
                return np.uint32(sign | (np.int64(f32_bits(np.float32(m))) - (24 << 23)))
            if e == 31:
                return np.uint32(sign | F32_EXP | (m << 13))
            return np.uint32(sign | ((e + 112) << 23) | (m << 13))

        return fp16
    if u == types.uint32:

        def f32(u: Any) -> Any:
            return u

        return f32
    return None


def element_params(
    mbits: int, bias: int, code_max: int, sign_mask: int, nan_code: int, negzero: bool
) -> np.ndarray:
    """The constants :func:`round_code` takes, as uint32 (see its docstring)."""
    shift = 23 - mbits
    emin = 1 - bias
    return np.array(
        [
            shift,
            (1 << (shift - 1)) - 1,
            (127 - bias) << mbits,
            (emin + 127) << 23,
            (emin - mbits + 23 + 127) << 23,
            code_max,
            sign_mask,
            nan_code,
            sign_mask if negzero else 0,
        ],
        dtype=np.uint32,
    )


@njit(cache=True, inline="always")
def unpack(p: Any) -> Any:
    """The constants of :func:`element_params` as a tuple of scalars (hoisted out of loops)."""
    return (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8])


@njit(cache=True, inline="always")
def round_code(y: Any, p: Any) -> Any:  # p: a tuple of the 9 constants, read outside loops
    """Element code of float32 ``y`` (uint32): RNE at the element's mantissa, saturate to ±max.

    ``p`` = :func:`element_params` as a tuple (``unpack``): shift ``23 - mbits``, rounding bias ``2**(shift-1) - 1``,
    exponent rebias, bits of the smallest normal, bits of the "magic" float32 whose ulp is the
    smallest subnormal, code of max, sign bit, NaN code (0 for formats without NaN), and the
    sign bit again if the format has a negative zero (0 for FNUZ).

    Normal values: integer RNE on the bit pattern. Values below the smallest normal: one float32
    add of the magic constant (an exact RNE step at the subnormal quantum). NaN gives the NaN
    code; the sign of zero is kept where the format has -0. Branch-free 32-bit integer code (the
    ``u_*`` intrinsics), so the loops vectorise.
    """
    yb = f32_bits(y)
    a = u_and(yb, np.uint32(F32_ABS))
    sub = u_sub(f32_bits(bits_f32(a) + bits_f32(p[4])), p[4])
    bumped = u_add(u_add(a, p[1]), u_and(u_shr(a, p[0]), np.uint32(1)))
    normal = u_sub(u_shr(bumped, p[0]), p[2])
    code = min(sub if a < p[3] else normal, p[5])
    sign = p[6] if yb > np.uint32(F32_ABS) else np.uint32(0)
    sign = sign if code != np.uint32(0) else u_and(sign, p[8])
    return u_or(code, sign) if a <= np.uint32(F32_EXP) else p[7]


@njit(cache=True, inline="always")
def bf16_bits(y: Any) -> Any:
    """bfloat16 bits of float32 ``y``, rounded to nearest even (NaN: sign | 0x7FC0, as ml_dtypes)."""
    b = f32_bits(y)
    nan = u_or(u_and(u_shr(b, np.uint32(16)), np.uint32(0x8000)), np.uint32(0x7FC0))
    lsb = u_and(u_shr(b, np.uint32(16)), np.uint32(1))
    rounded = u_shr(u_add(u_add(b, np.uint32(0x7FFF)), lsb), np.uint32(16))
    return rounded if u_and(b, np.uint32(F32_ABS)) <= np.uint32(F32_EXP) else nan
