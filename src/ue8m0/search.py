"""Scale search: per block, pick the power-of-two scale that minimises the squared error.

A ceil rule (``rceil``) never saturates but can leave up to one bit of the element range unused.
The exponent one below it uses that bit at the price of saturating the largest elements. For
each block this module quantizes with both and keeps the one whose dequantized values have the
smaller sum of squared errors against the source values (ties keep the rule's own scale), so the
result is deterministic and never worse, block by block, than the rule it starts from.
"""

from __future__ import annotations

import numpy as np

from ue8m0.blocks import resolve_block
from ue8m0.formats import UE8M0, ElementFormat, decode_table
from ue8m0.reference import _from_blocks, _to_blocks, decode_scale_bytes, encode

#: elements per band of block rows processed at once (bounds the float64 temporaries)
_BAND_ELEMENTS = 1 << 20


def _block_sse(
    blocks: np.ndarray, codes: np.ndarray, scale_codes: np.ndarray, fmt: ElementFormat
) -> np.ndarray:
    values = decode_table(fmt)[codes].astype(np.float64)
    scale = np.ldexp(1.0, scale_codes.astype(np.int64) - 127)[..., None]
    err = values * scale - blocks.astype(np.float64)
    return np.einsum("...k,...k->...", err, err)


def refine_mse(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    codes: np.ndarray,
    scale_codes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Given a power-of-two quantization of ``x``, move each block to the exponent below when
    that lowers its squared error. Returns new ``(codes, scale, scale_codes)`` (inputs untouched).

    Blocks with a NaN scale (non-finite input under ``propagate``) and byte 0 are left as they
    are.
    """
    x32 = np.asarray(x).astype(np.float32)
    br, _ = resolve_block(block, x32.shape)
    out_codes = codes.copy()
    out_sc = scale_codes.copy()
    rows = x32.shape[-2]
    band_rows = max(br, (_BAND_ELEMENTS // max(x32.shape[-1], 1)) // br * br)
    for r0 in range(0, rows, band_rows):
        r1 = min(rows, r0 + band_rows)
        g0, g1 = r0 // br, -(-r1 // br)
        xb, _ = _to_blocks(x32[..., r0:r1, :], block)
        cb, _ = _to_blocks(codes[..., r0:r1, :], block)
        hi = scale_codes[..., g0:g1, :].reshape(xb.shape[:-1])
        usable = (hi > 0) & (hi != UE8M0.nan_code)
        lo = np.where(usable, hi.astype(np.int64) - 1, hi).astype(np.uint8)
        multiplier = np.ldexp(np.float32(1.0), 127 - lo.astype(np.int32)).astype(np.float32)
        lo_codes = encode((xb * multiplier[..., None]).astype(np.float32), fmt)
        better = usable & (_block_sse(xb, lo_codes, lo, fmt) < _block_sse(xb, cb, hi, fmt))
        if not better.any():
            continue
        chosen = np.where(better[..., None], lo_codes, cb)
        out_codes[..., r0:r1, :] = _from_blocks(chosen, x32[..., r0:r1, :].shape, block)
        out_sc[..., g0:g1, :] = np.where(better, lo, hi).reshape(out_sc[..., g0:g1, :].shape)
    return out_codes, decode_scale_bytes(out_sc), out_sc
