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
from numba.core import cgutils
from numba.extending import intrinsic, overload

F32_EXP = 0x7F800000
F32_ABS = 0x7FFFFFFF


def _bitcast(source: Any, target: Any, target_ir: Any, doc: str) -> Any:
    """An intrinsic reinterpreting a ``source`` scalar's bits as a ``target`` scalar."""

    def cast(typingctx: Any, x: Any) -> Any:
        if x != source:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], target_ir)

        return target(source), codegen

    cast.__doc__ = doc
    return intrinsic(cast)


_f32_bits = _bitcast(
    types.float32, types.uint32, ir.IntType(32), "The IEEE bit pattern of a float32, as uint32."
)


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
f64_bits: Any = _bitcast(
    types.float64, types.int64, ir.IntType(64), "The IEEE bit pattern of a float64, as int64."
)
bits_f64: Any = _bitcast(
    types.int64, types.float64, ir.DoubleType(), "The float64 whose bit pattern is an int64."
)


@intrinsic
def _prefetch(typingctx: Any, arr: Any, index: Any) -> Any:
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, value=args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(2), i32(1)])  # read, into L2 (prefetcht1), data
        return context.get_dummy_value()

    return types.void(arr, index), codegen


#: ``prefetch(row, i)``: hint the CPU to fetch the cache line of ``row[i]`` (1-D array) into
#: L2 (``prefetcht1``): the next task is read from there, and an L1 prefetch would hold one
#: of the few L1 fill buffers the current task's loads and stores need (≈ 3 % faster)
prefetch: Any = _prefetch


@intrinsic
def _amax32(typingctx: Any, arr: Any) -> Any:
    """Sign-cleared bits of the largest magnitude of ``arr[:32]`` (1-D C array of an input view).

    One 32-lane load and ``llvm.vector.reduce.umax``: a few shuffles per block, where a loop of
    32 gets unrolled into a scalar chain.
    """
    if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
        return None
    dtype = arr.dtype
    if dtype not in (types.uint16, types.int16, types.uint32):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, value=args[0])
        width = dtype.bitwidth
        lane = ir.IntType(width)
        vec = ir.VectorType(lane, 32)
        v = builder.load(ary.data, typ=vec, align=1)
        mask = ir.Constant(vec, [ir.Constant(lane, (1 << (width - 1)) - 1)] * 32)
        v = builder.and_(v, mask)
        fnty = ir.FunctionType(lane, [vec])
        name = f"llvm.vector.reduce.umax.v32i{width}"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        return builder.call(fn, [v])

    return dtype(arr), codegen


#: ``amax32(seg)``: :func:`mag` of the largest magnitude among ``seg[:32]`` (caller ensures 32)
amax32: Any = _amax32


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


def mag(u: Any) -> Any:
    """The input element's bits with the sign cleared, in its own integer type.

    For every input format the magnitude bits are ordered like the magnitudes (Inf and NaN
    above all finite values), so a block's amax can be taken on them in 16-bit lanes and
    widened once (:func:`widen` is monotone on them).
    """
    raise NotImplementedError  # only callable from numba code


@overload(mag, inline="always")
def _mag_impl(u: Any) -> Any:
    if u == types.uint16:

        def m16(u: Any) -> Any:
            return u_and(u, np.uint16(0x7FFF))

        return m16
    if u == types.int16:

        def i16(u: Any) -> Any:
            return u_and(u, np.int16(0x7FFF))

        return i16
    if u == types.uint32:

        def m32(u: Any) -> Any:
            return u_and(u, np.uint32(F32_ABS))

        return m32
    return None


def element_params(
    mbits: int, bias: int, max_bits: int, sign_mask: int, nan_code: int, negzero: bool
) -> np.ndarray:
    """The constants :func:`round_code` takes, as uint32 (see its docstring).

    ``max_bits`` is the float32 bit pattern of the format's largest finite value.
    """
    shift = 23 - mbits
    emin = 1 - bias
    # code = s - c + (c >> shift) - k2, with c the magic constant of the binade (below)
    k2 = (127 + shift - bias + 1) << mbits
    return np.array(
        [
            shift,
            max_bits,
            (emin + 127) << 23,  # the smallest normal: binades below share its quantum
            shift << 23,  # c = 2**(E + shift): its ulp is the element quantum of binade E
            (1 << 32) - k2,  # -k2 modulo 2**32
            sign_mask,
            nan_code,
            sign_mask if negzero else 0,
            31 - sign_mask.bit_length() + 1,  # shifts the float32 sign onto the code's
        ],
        dtype=np.uint32,
    )


@njit(cache=True, inline="always")
def unpack(p: Any) -> Any:
    """The constants of :func:`element_params` as a tuple of scalars (hoisted out of loops)."""
    return (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8])


@njit(cache=True, inline="always")
def round_code(y: Any, p: Any) -> Any:
    """Element code of float32 ``y`` (uint32): RNE at the element's mantissa, saturate to ±max.

    ``p`` = :func:`unpack` of :func:`element_params`. The magnitude is clamped to the format's
    max (as the oracle does), then rounded with one float32 add: for a value in binade ``E``
    (``E`` raised to the format's smallest normal exponent, so subnormals share its quantum),
    ``c = 2**(E + 23 - mbits)`` has exactly the element quantum as ulp and ``|y| + c`` stays in
    ``c``'s binade, so the add is the round-to-nearest-even step. The number of quanta above
    ``c`` plus the code of ``2**E`` is the code, carries into the next binade included.
    NaN gives the NaN code (0 for formats without NaN); the sign of zero is kept where the
    format has -0. Branch-free 32-bit integer code (the ``u_*`` intrinsics): loops vectorise.
    """
    yb = f32_bits(y)
    a = min(u_and(yb, np.uint32(F32_ABS)), p[1])
    c = u_add(max(u_and(a, np.uint32(F32_EXP)), p[2]), p[3])
    s = f32_bits(bits_f32(a) + bits_f32(c))
    code = u_add(u_add(u_sub(s, c), u_shr(c, p[0])), p[4])
    sign = u_and(u_shr(yb, p[8]), p[5])
    sign = sign if code != np.uint32(0) else u_and(sign, p[7])
    return u_or(code, sign) if u_and(yb, np.uint32(F32_ABS)) <= np.uint32(F32_EXP) else p[6]


@njit(cache=True, inline="always")
def round_code_finite(y: Any, p: Any) -> Any:
    """:func:`round_code` for finite ``y`` in a format with a negative zero (fewer selects)."""
    yb = f32_bits(y)
    a = min(u_and(yb, np.uint32(F32_ABS)), p[1])
    c = u_add(max(u_and(a, np.uint32(F32_EXP)), p[2]), p[3])
    s = f32_bits(bits_f32(a) + bits_f32(c))
    code = u_add(u_add(u_sub(s, c), u_shr(c, p[0])), p[4])
    return u_or(code, u_and(u_shr(yb, p[8]), p[5]))


def decode_params(
    bits: int, mbits: int, bias: int, nan_mag: int, ieee: bool, fnuz: bool
) -> np.ndarray:
    """The constants :func:`decode` takes, as uint32 (see its docstring)."""
    sign_mask = 1 << (bits - 1)
    top = (1 << (bits - 1 - mbits)) - 1  # all-ones exponent field
    never = 0xFFFFFFFF
    return np.array(
        [
            sign_mask - 1,
            mbits,
            (1 << mbits) - 1,
            23 - mbits,
            (127 - bias) << 23,
            np.float32(2.0 ** (1 - bias - mbits)).view(np.uint32),
            nan_mag,
            top if ieee else never,
            sign_mask if fnuz else never,
            32 - bits,
            sign_mask,
            bias + mbits,  # smallest float32 exponent field of a scale that keeps products normal
            (top << mbits) + 1 if ieee else nan_mag,  # the smallest NaN magnitude (else never)
            (top << mbits) if ieee else never,  # the Inf magnitude (else never)
            (254 - bias) << 23,  # float32 2**(127 - bias)
        ],
        dtype=np.uint32,
    )


@njit(cache=True, inline="always")
def unpack_decode(q: Any) -> Any:
    """The constants of :func:`decode_params` as a tuple of scalars (hoisted out of loops)."""
    return (
        q[0],
        q[1],
        q[2],
        q[3],
        q[4],
        q[5],
        q[6],
        q[7],
        q[8],
        q[9],
        q[10],
        q[11],
        q[12],
        q[13],
        bits_f32(q[14]),
    )


@njit(cache=True, inline="always")
def decode(code: Any, q: Any) -> Any:
    """float32 value of an element code, computed (no table): equal to ``decode_table``.

    ``q`` = :func:`unpack_decode` of :func:`decode_params`: magnitude mask, mbits, mantissa
    mask, ``23 - mbits``, exponent rebias, float32 bits of the smallest subnormal, the NaN
    magnitude of FN formats (else never), the all-ones exponent of IEEE formats (else never),
    the FNUZ NaN code (else never), the shift of the code's sign onto float32's, sign mask.
    NaN codes give the positive quiet NaN, as the table does.
    """
    c = np.uint32(code)
    mag = u_and(c, q[0])
    e = u_shr(mag, q[1])
    mant = u_and(mag, q[2])
    sign = u_shl(u_and(c, q[10]), q[9])
    normal = u_add(u_shl(mag, q[3]), q[4])
    sub = f32_bits(np.float32(mant) * bits_f32(q[5]))
    v = u_or(sub if e == np.uint32(0) else normal, sign)
    top = e == q[7]
    zero_mant = mant == np.uint32(0)
    v = u_or(np.uint32(F32_EXP), sign) if top & zero_mant else v
    nan = (mag == q[6]) | (top & ~zero_mant) | (c == q[8])
    return bits_f32(np.uint32(0x7FC00000) if nan else v)


@njit(cache=True, inline="always")
def decode_scaled(code: Any, q: Any, s: Any) -> Any:
    """``decode(code, q) * s`` for a scale ``s`` that keeps products exact (``exact_scale``).

    The code's sign and magnitude bits shifted into float32's fields are the code's value
    times ``2**(bias - 127)`` (a float32 subnormal for the format's subnormals), so one exact
    multiply by ``2**(127 - bias)`` (``q[14]``) decodes every finite code and one by ``s`` scales
    it; Inf (magnitude ``q[13]``) is selected before the multiplies, NaN (magnitudes from
    ``q[12]``, or the FNUZ NaN code) after them.
    """
    c = np.uint32(code)
    mag = u_and(c, q[0])
    sign = u_shl(u_and(c, q[10]), q[9])
    x = u_or(u_shl(mag, q[3]) if mag != q[13] else np.uint32(F32_EXP), sign)
    v = bits_f32(x) * q[14] * s
    return bits_f32(np.uint32(0x7FC00000)) if (mag >= q[12]) | (c == q[8]) else v


@njit(cache=True, inline="always")
def bf16_bits(y: Any) -> Any:
    """bfloat16 bits of float32 ``y``, rounded to nearest even (NaN: sign | 0x7FC0, as ml_dtypes)."""
    b = f32_bits(y)
    nan = u_or(u_and(u_shr(b, np.uint32(16)), np.uint32(0x8000)), np.uint32(0x7FC0))
    lsb = u_and(u_shr(b, np.uint32(16)), np.uint32(1))
    rounded = u_shr(u_add(u_add(b, np.uint32(0x7FFF)), lsb), np.uint32(16))
    return rounded if u_and(b, np.uint32(F32_ABS)) <= np.uint32(F32_EXP) else nan
