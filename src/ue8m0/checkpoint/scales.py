"""Stored scales: their dtypes, how they decode to float32 multipliers and encode back, and how a
scale grid maps to a block shape. No layout knowledge here (that is :mod:`.registry`)."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.reference import decode_scale_bytes

#: ``scale_dtype`` option -> safetensors tag of the stored scale
SCALE_DTYPES = {"f32": "F32", "e8m0": "F8_E8M0", "u8": "U8"}
#: tags a scale may be stored in when reading
SCALE_TAGS = ("F32", "BF16", "F16", "U8", "F8_E8M0")
#: tags that store biased exponent bytes (``2**(b - 127)``) rather than values
BYTE_SCALE_TAGS = ("U8", "F8_E8M0")


def scale_grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """The scale grid of a ``(..., rows, cols)`` tensor: leading dims, then ceil-divided."""
    return (*shape[:-2], -(-shape[-2] // block[0]), -(-shape[-1] // block[1]))


def decode_scale(arr: np.ndarray, tag: str) -> np.ndarray:
    """A stored scale as the float32 dequant multiplier (U8/E8M0 are biased exponents)."""
    if tag in BYTE_SCALE_TAGS:
        return decode_scale_bytes(arr.view(np.uint8))
    return np.asarray(arr, dtype=np.float32)


def encode_scale(scale: np.ndarray, codes: np.ndarray | None, dtype_tag: str) -> np.ndarray:
    """A quantized tensor's scale as stored under ``dtype_tag``."""
    if dtype_tag not in BYTE_SCALE_TAGS:
        return scale.astype(np.float32, copy=False)
    assert codes is not None, "byte scales need a power-of-two scale rule"
    if dtype_tag == "U8":
        return codes.astype(np.uint8, copy=False)
    return codes.astype(np.uint8, copy=False).view(ml_dtypes.float8_e8m0fnu)


def is_power_of_two(scale: np.ndarray) -> np.ndarray:
    """Elementwise: a positive finite float32 exact power of two (normal or subnormal)."""
    s = np.asarray(scale, dtype=np.float32)
    bits = s.view(np.uint32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    normal = (exp > 0) & (exp < 255) & (mant == 0)
    subnormal = (exp == 0) & (mant != 0) & ((mant & (mant - 1)) == 0)
    return (bits >> 31 == 0) & (normal | subnormal)


def ue8m0_codes(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, codes)``: where a float32 scale is ``2**e`` with ``-127 <= e <= 127`` (a UE8M0
    value), and its byte ``e + 127`` there (0 elsewhere)."""
    s = np.asarray(scale, dtype=np.float32)
    frac, exp = np.frexp(s.astype(np.float64))
    code = exp.astype(np.int64) + 126
    ok = (frac == 0.5) & (code >= 0) & (code <= 254)
    return ok, np.where(ok, code, 0).astype(np.uint8)


def config_block(config: dict[str, Any] | None) -> tuple[int, int] | None:
    """The weight block a ``quantization_config`` declares (``weight_block_size``, or a
    compressed-tensors group's ``block_structure``)."""
    qc = (config or {}).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    block = qc.get("weight_block_size")
    if block is None:
        groups = qc.get("config_groups")
        for group in (groups if isinstance(groups, dict) else {}).values():
            weights = group.get("weights") if isinstance(group, dict) else None
            if isinstance(weights, dict) and weights.get("block_structure"):
                block = weights["block_structure"]
                break
    if (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        return int(block[0]), int(block[1])
    return None


def _infer_dim(size: int, grid: int) -> int | None:
    if grid <= 0 or size <= 0:
        return None
    lo, hi = size / grid, size / (grid - 1) if grid > 1 else math.inf
    power = 1 << max(0, math.ceil(math.log2(lo)))
    if lo <= power < hi:
        return power
    guess = math.ceil(lo)
    return guess if math.ceil(size / guess) == grid else None


def infer_block(
    shape: tuple[int, ...], grid: tuple[int, ...], declared: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The block that maps ``shape`` to the scale ``grid`` (the declared one when it fits)."""
    if len(grid) != len(shape) or tuple(grid[:-2]) != tuple(shape[:-2]):
        return None
    n, k, gn, gk = shape[-2], shape[-1], grid[-2], grid[-1]
    if (
        declared is not None
        and math.ceil(n / declared[0]) == gn
        and math.ceil(k / declared[1]) == gk
    ):
        return declared
    br, bc = _infer_dim(n, gn), _infer_dim(k, gk)
    return None if br is None or bc is None else (br, bc)
