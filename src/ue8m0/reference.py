"""The numpy oracle: plain, obviously correct, slow. Fast kernels are tested against it bit for bit.

Nothing here is clever: blocks are materialised by padding and reshaping, scale bytes come from
the float32 bit fields exactly as the docstrings of :class:`~ue8m0.policies.ScaleRule` say, and
elements are rounded in float64, where every step is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ue8m0.blocks import resolve_block, scale_grid
from ue8m0.errors import NonFiniteError
from ue8m0.formats import UE8M0, ElementFormat, decode_table
from ue8m0.policies import NonFinite, ScaleRule

_MANT = np.int64(0x7FFFFF)


def _fields(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponent and mantissa fields of non-negative float32 values, as int64."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (bits >> 23) & 0xFF, bits & _MANT


def scale_bytes(a: np.ndarray, fmt: ElementFormat, rule: ScaleRule) -> np.ndarray:
    """UE8M0 bytes for block maxima ``a = max(amax, eps)`` (finite, >= 0, float32)."""
    a = np.asarray(a, dtype=np.float32)
    m = np.float32(fmt.max)
    if rule is ScaleRule.RCEIL:
        exp, mant = _fields(a / m)
        exponent = np.where(exp == 0, (mant > 0x400000).astype(np.int64), exp + (mant != 0)) - 127
    elif rule is ScaleRule.LOG2:
        r = (a / m).astype(np.float64)
        with np.errstate(divide="ignore"):
            log2 = np.log2(r).astype(np.float32)  # float64 log2 rounded once: correctly rounded
        exponent = np.where(r == 0, -127, np.ceil(np.where(r == 0, 0, log2))).astype(np.int64)
    elif rule is ScaleRule.FLOOR:
        exp, _ = _fields(a)
        exponent = exp - 127 - fmt.emax
    elif rule is ScaleRule.CEIL:
        exp, mant = _fields(a)
        exponent = exp - 127 + (mant != 0) - fmt.emax
    elif rule is ScaleRule.EVEN:
        bits = a.view(np.uint32).astype(np.int64)
        rounded = (bits + (1 << (23 - fmt.mbits - 1))) & 0x7F800000
        exponent = (rounded >> 23) - 127 - fmt.emax
    else:
        raise ValueError(f"{rule} has no scale byte")
    return (np.clip(exponent, -127, UE8M0.max_exponent) + 127).astype(np.uint8)


def decode_scale_bytes(codes: np.ndarray) -> np.ndarray:
    """float32 value of UE8M0 bytes: ``2**(b - 127)``, NaN for 0xFF (2**-127 is a subnormal)."""
    codes = np.asarray(codes, dtype=np.uint8)
    nan = codes == UE8M0.nan_code
    out = np.ldexp(np.float32(1.0), np.where(nan, 0, codes.astype(np.int32) - 127))
    return np.where(nan, np.float32(np.nan), out).astype(np.float32)


def encode(values: np.ndarray, fmt: ElementFormat) -> np.ndarray:
    """Element codes of float values: round to nearest even, saturate to ``±max``.

    NaN becomes the format's NaN code (0 for formats without NaN). Signs of zero are kept except
    in FNUZ formats, which have no negative zero.
    """
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    negative = np.signbit(v) & ~nan
    mag = np.minimum(np.abs(np.where(nan, 0.0, v)), fmt.max)
    _, e2 = np.frexp(mag)
    exponent = np.maximum(e2.astype(np.int64) - 1, fmt.emin)  # floor(log2 mag), or emin
    quantum = np.ldexp(1.0, exponent - fmt.mbits)
    rounded = np.rint(mag / quantum) * quantum  # exact in float64; rint is ties-to-even
    normal = rounded >= fmt.smallest_normal
    frac, e3 = np.frexp(np.where(normal, rounded, 1.0))
    exp_field = np.where(normal, e3.astype(np.int64) - 1 + fmt.bias, 0)
    mant_field = np.where(
        normal,
        (frac * 2 - 1) * (1 << fmt.mbits),
        rounded / fmt.smallest_subnormal,
    ).astype(np.int64)
    code = (exp_field << fmt.mbits) | mant_field
    if fmt.has_negative_zero:
        code = np.where(negative, code | fmt.sign_mask, code)
    else:
        code = np.where(negative & (code != 0), code | fmt.sign_mask, code)
    if fmt.nan_code is not None:
        code = np.where(nan, fmt.nan_code, code)
    else:
        code = np.where(nan, 0, code)
    return code.astype(np.uint8)


def _to_blocks(x: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Zero-pad ``x`` and reshape to ``(batch, grid_rows, grid_cols, block_elems)``."""
    grid = scale_grid(x.shape, block)
    br, bc = resolve_block(block, x.shape)
    gr, gc = grid[-2], grid[-1]
    batch = int(np.prod(x.shape[:-2], dtype=np.int64))
    padded = np.zeros((batch, gr * br, gc * bc), dtype=x.dtype)
    padded[:, : x.shape[-2], : x.shape[-1]] = x.reshape(batch, x.shape[-2], x.shape[-1])
    blocks = padded.reshape(batch, gr, br, gc, bc).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(batch, gr, gc, br * bc), grid


def _from_blocks(blocks: np.ndarray, shape: tuple[int, ...], block: tuple[int, int]) -> np.ndarray:
    br, bc = resolve_block(block, shape)
    batch, gr, gc, _ = blocks.shape
    full = blocks.reshape(batch, gr, gc, br, bc).transpose(0, 1, 3, 2, 4)
    full = full.reshape(batch, gr * br, gc * bc)[:, : shape[-2], : shape[-1]]
    return np.ascontiguousarray(full).reshape(shape)


def _raise_nonfinite(blocks: np.ndarray, bad: np.ndarray, grid: tuple[int, ...]) -> None:
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    index = np.unravel_index(flat, grid)
    batch_index = np.unravel_index(flat, bad.shape)
    values = blocks[batch_index]
    value = float(values[~np.isfinite(values)][0])
    where = tuple(int(i) for i in index)
    raise NonFiniteError.in_block(value, where, grid)


def quantize(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    rule: ScaleRule,
    eps: float,
    nonfinite: NonFinite,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize a float array (ndim >= 2). Returns ``(codes, scale, scale_codes)``.

    ``codes`` are uint8 element codes of ``x``'s shape; ``scale`` float32 and ``scale_codes``
    uint8 (None for ``fp32``) have the shape of the scale grid.
    """
    x32 = np.asarray(x).astype(np.float32)
    blocks, grid = _to_blocks(x32, block)
    finite = np.isfinite(blocks)
    bad = ~finite.all(axis=-1)
    if bad.any() and nonfinite is NonFinite.RAISE:
        _raise_nonfinite(blocks, bad, grid)
    magnitudes = np.abs(np.where(finite, blocks, np.float32(0)))
    amax = magnitudes.max(axis=-1)
    a = np.maximum(amax, np.float32(eps))

    scale_codes: np.ndarray | None
    if rule.is_power_of_two:
        scale_codes = scale_bytes(a, fmt, rule)
        scale = decode_scale_bytes(scale_codes)
        multiplier = np.ldexp(np.float32(1.0), 127 - scale_codes.astype(np.int32))
        multiplier = multiplier.astype(np.float32)
    else:
        scale_codes = None
        scale = (a / np.float32(fmt.max)).astype(np.float32)
        with np.errstate(divide="ignore"):
            multiplier = (np.float32(1.0) / scale).astype(np.float32)
        multiplier = np.where(scale == 0, np.float32(0), multiplier).astype(np.float32)
    if rule is ScaleRule.FP32_DIV:  # x / s (a zero scale divides by inf: zero elements)
        divisor = np.where(scale == 0, np.float32(np.inf), scale).astype(np.float32)
        scaled = (blocks / divisor[..., None]).astype(np.float32)
    else:
        scaled = (blocks * multiplier[..., None]).astype(np.float32)
    codes = encode(scaled, fmt)

    if bad.any():  # nonfinite == PROPAGATE
        codes[bad] = fmt.nan_code if fmt.nan_code is not None else 0
        scale = np.where(bad, np.float32(np.nan), scale).astype(np.float32)
        if scale_codes is not None:
            scale_codes = np.where(bad, UE8M0.nan_code, scale_codes).astype(np.uint8)

    codes_full = _from_blocks(codes, x.shape, block)
    scale = scale.reshape(grid)
    return codes_full, scale, None if scale_codes is None else scale_codes.reshape(grid)


def expand_scale(scale: np.ndarray, shape: tuple[int, ...], block: tuple[int, int]) -> np.ndarray:
    """Broadcast a scale grid to the full tensor shape (each scale repeated over its block)."""
    br, bc = resolve_block(block, shape)
    full = np.repeat(np.repeat(scale, br, axis=-2), bc, axis=-1)
    return full[..., : shape[-2], : shape[-1]]


def dequantize(
    codes: np.ndarray,
    scale: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    dtype: Any = np.float32,
) -> np.ndarray:
    """``decode(codes) * scale`` in float32, then cast to ``dtype`` (round to nearest even)."""
    values = decode_table(fmt)[np.asarray(codes, dtype=np.uint8)]
    with np.errstate(invalid="ignore", over="ignore"):
        out = (values * expand_scale(scale.astype(np.float32), codes.shape, block)).astype(
            np.float32
        )
    return out if np.dtype(dtype) == np.float32 else out.astype(dtype)
