"""Packed FP4 (E2M1) with one UE8M0 scale per 32 inputs: pack, unpack, dequantize.

This is the storage of DeepSeek-V4's routed experts (see :mod:`ue8m0.deepseek_v4` for the
sources): a weight ``[out, in]`` is stored as ``int8 [out, in/2]``, element ``2i`` of a row in
the **low** nibble (bits 0-3) of byte ``i`` and element ``2i+1`` in the high nibble; its scale
is ``float8_e8m0fnu [out, in/32]``, byte ``b`` meaning ``2**(b - 127)`` (0xFF is NaN).

A nibble is an E2M1 code: bit 3 the sign, bits 0-2 the magnitude index into
``0, 0.5, 1, 1.5, 2, 3, 4, 6``. Code 8 is ``-0.0`` here, as in transformers' table and the
E2M1 format (DeepSeek's ``convert.py`` table reads it as ``+0.0``; only the sign of a zero
differs). Dequantization multiplies in float32 (exact: every product of an E2M1 value and a
UE8M0 scale is a float32 value, or overflows to Inf for the largest bytes) and rounds to
bfloat16 to nearest even when asked, as transformers' ``(q * s).to(bfloat16)`` does.

Each fast function has a slow scalar oracle (``*_oracle``: plain Python loops) that the tests
compare with it bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.errors import FormatNameError, InputError, InputTypeError
from ue8m0.formats import UE8M0
from ue8m0.policies import NonFinite

#: inputs per UE8M0 scale along a row
GROUP = 32
#: magnitudes of E2M1 codes 0-7 (codes 8-15 are their negatives)
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: float32 value of each of the 16 codes; code 8 is -0.0
E2M1_VALUES = np.array([*E2M1_MAGNITUDES, *(-m for m in E2M1_MAGNITUDES)], dtype=np.float32)

_OUT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


def pack_fp4(codes: np.ndarray) -> np.ndarray:
    """Two E2M1 codes per byte: ``uint8 [..., n]`` (values 0..15, ``n`` even) -> ``int8 [..., n/2]``.

    Element ``2i`` goes to the low nibble of byte ``i``, element ``2i+1`` to the high one.
    """
    c = np.asarray(codes)
    if c.dtype != np.uint8:
        raise InputTypeError(f"FP4 codes must be uint8, got {c.dtype}")
    if c.ndim < 1 or c.shape[-1] % 2:
        raise InputError(f"FP4 codes need an even last dim to pack, got shape {c.shape}")
    if c.size and int(c.max()) > 15:
        raise InputError(f"FP4 codes must be 0..15, found {int(c.max())}")
    packed = c[..., 0::2] | (c[..., 1::2] << np.uint8(4))
    return packed.view(np.int8)


def unpack_fp4(packed: np.ndarray) -> np.ndarray:
    """The E2M1 codes of packed bytes: ``int8/uint8 [..., m]`` -> ``uint8 [..., 2m]`` (low first)."""
    p = _packed_bytes(packed)
    out = np.empty((*p.shape[:-1], 2 * p.shape[-1]), dtype=np.uint8)
    out[..., 0::2] = p & np.uint8(0x0F)
    out[..., 1::2] = p >> np.uint8(4)
    return out


def _packed_bytes(packed: Any) -> np.ndarray:
    """``packed`` as a uint8 view, or a clear error (int8/uint8 arrays only)."""
    if not isinstance(packed, np.ndarray):
        raise InputTypeError(f"packed FP4 must be a numpy array, got {type(packed).__name__}")
    if packed.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise InputTypeError(f"packed FP4 must be int8 or uint8, got {packed.dtype}")
    if packed.ndim < 1:
        raise InputError("packed FP4 must have at least one dim")
    return packed.view(np.uint8)


def scale_bytes_of(scale: Any) -> np.ndarray:
    """UE8M0 scale bytes as a uint8 view (from uint8 or ``float8_e8m0fnu`` arrays)."""
    if not isinstance(scale, np.ndarray):
        raise InputTypeError(f"scales must be a numpy array, got {type(scale).__name__}")
    if scale.dtype not in (np.dtype(np.uint8), UE8M0.dtype):
        raise InputTypeError(f"scales must be uint8 or float8_e8m0fnu bytes, got {scale.dtype}")
    return scale.view(np.uint8)


def check_fp4_pair(packed: Any, scale: Any, name: str = "FP4 weight") -> tuple[np.ndarray, ...]:
    """``(packed bytes, scale bytes)`` as uint8 after checking the V4 layout's shapes.

    ``packed`` is ``[..., out, in/2]``, ``scale`` must be ``[..., out, in/32]`` with ``in`` a
    multiple of 32; any mismatch is one :class:`~ue8m0.errors.InputError` naming both shapes.
    """
    p = _packed_bytes(packed)
    s = scale_bytes_of(scale)
    if p.ndim < 2:
        raise InputError(f"{name}: packed FP4 must be [..., out, in/2], got shape {p.shape}")
    n_in = 2 * p.shape[-1]
    if n_in == 0 or n_in % GROUP or p.shape[-2] == 0:
        raise InputError(
            f"{name}: packed shape {p.shape} holds {n_in} inputs per row; "
            f"need a positive multiple of {GROUP} (one scale per {GROUP})"
        )
    want = (*p.shape[:-1], n_in // GROUP)
    if tuple(s.shape) != want:
        raise InputError(
            f"{name}: scale shape {tuple(s.shape)} does not match packed shape {p.shape}: "
            f"expected {want} (one scale per {GROUP} inputs of a row)"
        )
    return p, s


def _out_dtype(dtype: Any) -> np.dtype[Any]:
    d = np.dtype(dtype)
    if d not in _OUT_DTYPES:
        raise FormatNameError(f"FP4 dequantize dtype must be float32 or bfloat16, got {d}")
    return d


def _raise_nan_scale(s: np.ndarray, name: str) -> None:
    where = tuple(int(i) for i in np.argwhere(s == UE8M0.nan_code)[0])
    raise InputError(
        f"{name}: scale byte 0xFF (NaN) at index {where} of the scale grid {tuple(s.shape)} "
        "(pass nonfinite='propagate' to decode its group as NaN)"
    )


def dequantize_fp4(
    packed: np.ndarray,
    scale: np.ndarray,
    dtype: Any = np.float32,
    *,
    nonfinite: str | NonFinite = "raise",
    name: str = "FP4 weight",
) -> np.ndarray:
    """``E2M1(code) * 2**(byte - 127)`` of a V4 FP4 weight, float32 or bfloat16 ``[..., out, in]``.

    ``packed``: int8/uint8 ``[..., out, in/2]``; ``scale``: uint8 or ``float8_e8m0fnu``
    ``[..., out, in/32]``. ``nonfinite``: a 0xFF (NaN) scale byte raises
    :class:`~ue8m0.errors.InputError` (``"raise"``) or makes its 32 outputs NaN
    (``"propagate"``). ``name`` prefixes error messages (a tensor name).
    """
    from ue8m0.kernels._fp4 import dequantize_fp4_kernel

    out_dtype = _out_dtype(dtype)
    policy = NonFinite.parse(nonfinite)
    p, s = check_fp4_pair(packed, scale, name)
    if policy is NonFinite.RAISE and (s == UE8M0.nan_code).any():
        _raise_nan_scale(s, name)
    bf16 = out_dtype == np.dtype(ml_dtypes.bfloat16)
    out = np.empty((*p.shape[:-1], 2 * p.shape[-1]), dtype=np.uint16 if bf16 else np.float32)
    dequantize_fp4_kernel(
        np.ascontiguousarray(p).reshape(-1, p.shape[-1]),
        np.ascontiguousarray(s).reshape(-1, s.shape[-1]),
        E2M1_VALUES,
        out.reshape(-1, out.shape[-1]),
        bf16,
    )
    return out.view(out_dtype)


def dequantize_fp4_oracle(
    packed: np.ndarray,
    scale: np.ndarray,
    dtype: Any = np.float32,
    *,
    nonfinite: str | NonFinite = "raise",
    name: str = "FP4 weight",
) -> np.ndarray:
    """:func:`dequantize_fp4` one element at a time in Python floats (slow; the oracle).

    Each value is the exact real product ``magnitude * 2**(byte - 127)`` with the code's sign,
    rounded once to float32 (``math.ldexp`` is exact in float64 here) and then to bfloat16.
    """
    out_dtype = _out_dtype(dtype)
    policy = NonFinite.parse(nonfinite)
    p, s = check_fp4_pair(packed, scale, name)
    rows = p.reshape(-1, p.shape[-1])
    srows = s.reshape(-1, s.shape[-1])
    out = np.empty((rows.shape[0], 2 * rows.shape[1]), dtype=np.float32)
    for r in range(rows.shape[0]):
        for i in range(rows.shape[1]):
            byte = int(rows[r, i])
            for k, code in enumerate((byte & 0x0F, byte >> 4)):
                j = 2 * i + k
                sb = int(srows[r, j // GROUP])
                if sb == UE8M0.nan_code:
                    if policy is NonFinite.RAISE:
                        _raise_nan_scale(s, name)
                    out[r, j] = np.nan
                    continue
                mag = math.ldexp(E2M1_MAGNITUDES[code & 7], sb - 127)
                value = -mag if code & 8 else mag
                with np.errstate(over="ignore"):
                    out[r, j] = np.float32(value)
    full = out.reshape(*p.shape[:-1], 2 * p.shape[-1])
    return full if out_dtype == np.float32 else full.astype(out_dtype)
