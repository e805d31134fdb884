"""Scale layouts that GPU kernels consume, each with its inverse.

* :func:`pack_ue8m0` / :func:`unpack_ue8m0`: four UE8M0 bytes per int32, byte ``t`` of word ``j``
  is code ``4j + t`` (little-endian), padding code 0 — DeepGEMM's packed UE8M0
  (``smxx_layout.cuh``: ``(v0 >> 23) | (v1 >> 15) | (v2 >> 7) | (v3 << 1)``).
* :func:`deepgemm_scales` / :func:`deepgemm_scales_inverse`: DeepGEMM's SM100 scale operand, the
  packed words MN-major with the MN stride aligned to 4 (TMA), 128×128 weight scales first
  broadcast to one row per output row (``transform_sf_into_required_layout``).
* :func:`swizzle_128x4` / :func:`unswizzle_128x4`: the cuBLAS / CUTLASS block-scaling-factor
  layout (torchao ``to_blocked``, TransformerEngine's swizzled scales): 128×4 tiles of 512 bytes,
  entry ``(r, c)`` of a tile at ``(r % 32) * 16 + (r // 32) * 4 + c``.
* :func:`mx_relayout` / :func:`mx_relayout_inverse`: 128×128 block codes to 1×32 MX codes, each
  byte repeated (lossless: every 1×32 group lies inside one 128×128 block).

All functions take and return numpy arrays; leading dims are a batch (stacked MoE experts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ue8m0.errors import InputError, InputTypeError

#: the cuBLAS tile: 128 rows × 4 scale columns, 512 bytes
TILE_ROWS, TILE_COLS = 128, 4
TILE_BYTES = TILE_ROWS * TILE_COLS

#: TMA needs 16-byte aligned strides: 4 int32 words
TMA_ALIGN = 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _align(a: int, b: int) -> int:
    return _ceil_div(a, b) * b


def as_codes(scales: Any) -> np.ndarray:
    """UE8M0 codes as uint8: uint8 input is taken as is, floats must be exact powers of two.

    Float scales ``2**e`` (``-127 <= e <= 127``; ``2**-127`` is a float32 subnormal) become
    ``e + 127``; NaN becomes 0xFF. Anything else (a non-power-of-two fp32 scale) is an error,
    as in DeepGEMM's ``pack_ue8m0_to_int`` assert.
    """
    arr = np.asarray(scales)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError("UE8M0 codes must lie in 0..255")
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputTypeError(f"expected uint8 UE8M0 codes or float scales, got {arr.dtype}")
    values = arr.astype(np.float64)
    nan = np.isnan(values)
    frac, exp = np.frexp(np.where(nan, 1.0, values))
    code = exp.astype(np.int64) - 1 + 127
    ok = nan | ((frac == 0.5) & (code >= 0) & (code <= 254))
    if not ok.all():
        bad = float(values[~ok].ravel()[0])
        raise InputError(f"scale {bad!r} is not a power of two in [2**-127, 2**127]")
    return np.where(nan, 255, code).astype(np.uint8)


def _codes_nd(codes: Any, ndim: int, what: str) -> np.ndarray:
    arr = as_codes(codes)
    if arr.ndim < ndim:
        raise InputError(f"{what}: expected at least {ndim}-D codes, got shape {arr.shape}")
    return arr


# --- packing four codes per int32 -----------------------------------------------------------


def pack_ue8m0(codes: Any) -> np.ndarray:
    """uint8 codes ``(..., k)`` → int32 ``(..., ceil(k / 4))``; byte ``t`` of word ``j`` is code
    ``4j + t`` (little-endian), padding codes 0.

    Float power-of-two scales are accepted too (converted by :func:`as_codes`).
    """
    arr = _codes_nd(codes, 1, "pack_ue8m0")
    k = arr.shape[-1]
    padded = np.zeros((*arr.shape[:-1], _align(k, 4)), dtype=np.uint8)
    padded[..., :k] = arr
    return padded.view("<i4").astype(np.int32)


def unpack_ue8m0(packed: Any, k: int) -> np.ndarray:
    """Inverse of :func:`pack_ue8m0`: int32 ``(..., ceil(k / 4))`` → uint8 codes ``(..., k)``."""
    arr = np.asarray(packed)
    if arr.dtype not in (np.dtype(np.int32), np.dtype(np.uint32)):
        raise InputTypeError(f"unpack_ue8m0: expected int32 words, got {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != _ceil_div(k, 4) or k < 0:
        raise InputError(f"unpack_ue8m0: {k} codes need {_ceil_div(k, 4)} words, got {arr.shape}")
    words = np.ascontiguousarray(arr.astype("<i4", copy=False))
    return words.view(np.uint8)[..., :k].copy()


# --- cuBLAS / CUTLASS 128x4 swizzle ----------------------------------------------------------


def swizzle_128x4(codes: Any) -> np.ndarray:
    """A code matrix ``(..., H, W)`` → the flat cuBLAS block-scaling-factor layout ``(..., L)``.

    ``L = 512 * ceil(H / 128) * ceil(W / 4)``; the matrix is zero-padded to whole 128×4 tiles,
    tiles are stored row-major and entry ``(r, c)`` lands at
    ``tile * 512 + (r % 128 % 32) * 16 + (r % 128 // 32) * 4 + c % 4`` with
    ``tile = (r // 128) * ceil(W / 4) + c // 4``.
    """
    arr = _codes_nd(codes, 2, "swizzle_128x4")
    h, w = arr.shape[-2:]
    lead = arr.shape[:-2]
    rb, cb = _ceil_div(h, TILE_ROWS), _ceil_div(w, TILE_COLS)
    padded = np.zeros((*lead, rb * TILE_ROWS, cb * TILE_COLS), dtype=np.uint8)
    padded[..., :h, :w] = arr
    n = len(lead)
    tiles = padded.reshape(*lead, rb, 4, 32, cb, 4)
    perm = (*range(n), n, n + 3, n + 2, n + 1, n + 4)
    return np.ascontiguousarray(tiles.transpose(perm)).reshape(*lead, rb * cb * TILE_BYTES)


def unswizzle_128x4(flat: Any, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`swizzle_128x4`: ``(..., L)`` → the ``(..., h, w)`` code matrix."""
    arr = _codes_nd(flat, 1, "unswizzle_128x4")
    rb, cb = _ceil_div(h, TILE_ROWS), _ceil_div(w, TILE_COLS)
    if arr.shape[-1] != rb * cb * TILE_BYTES:
        raise InputError(
            f"unswizzle_128x4: ({h}, {w}) needs {rb * cb * TILE_BYTES} bytes, got {arr.shape[-1]}"
        )
    lead = arr.shape[:-1]
    n = len(lead)
    tiles = arr.reshape(*lead, rb, cb, 32, 4, 4)
    perm = (*range(n), n, n + 3, n + 2, n + 1, n + 4)  # the swap of axes 1 and 3 is its own inverse
    full = tiles.transpose(perm).reshape(*lead, rb * TILE_ROWS, cb * TILE_COLS)
    return np.ascontiguousarray(full[..., :h, :w])


# --- DeepGEMM MN-major TMA-aligned packed int32 ---------------------------------------------


def _gran_mn(rows: int, mn: int, gran_mn: int | None) -> int:
    if gran_mn is not None:
        if gran_mn < 1 or rows != _ceil_div(mn, gran_mn):
            raise InputError(f"{rows} scale rows do not cover mn={mn} at {gran_mn} rows each")
        return gran_mn
    if rows == mn:
        return 1
    if rows == _ceil_div(mn, 128):
        return 128
    raise InputError(
        f"deepgemm_scales: {rows} scale rows fit neither 1 row (mn={mn}) nor 128 rows "
        f"({_ceil_div(mn, 128)}) per scale; pass gran_mn"
    )


def deepgemm_scales(
    codes: Any, mn: int, *, gran_mn: int | None = None, flat: bool = False
) -> np.ndarray:
    """DeepGEMM's SM100 scale operand: packed UE8M0 int32, MN-major, MN stride aligned to 4.

    Args:
        codes: UE8M0 codes (or power-of-two float scales) ``(..., rows, sf_k)``: one row per
            output row (1×128 / 1×32 activation scales, ``rows == mn``) or one per 128 rows
            (128×128 weight scales, ``rows == ceil(mn / 128)``), which are broadcast to every
            row first as DeepGEMM does (``sf.index_select(-2, arange(mn) // 128)``).
        mn: rows of the operand (M for A, N for B).
        gran_mn: rows per scale row, inferred from ``rows`` when omitted.
        flat: return the int32 storage in memory order instead of the strided view.

    Returns:
        An int32 array of shape ``(..., mn, ceil(sf_k / 4))`` with strides
        ``(4, 4 * align(mn, 4))`` over the last two dims — what
        ``get_mn_major_tma_aligned_packed_ue8m0_tensor`` returns — viewing a zero-filled storage
        in which word ``(i, j)`` of batch ``b`` is at offset
        ``(b * ceil(sf_k / 4) + j) * align(mn, 4) + i``; with ``flat=True`` that storage, 1-D.
    """
    arr = _codes_nd(codes, 2, "deepgemm_scales")
    if mn < 1:
        raise InputError(f"deepgemm_scales: mn must be positive, got {mn}")
    g = _gran_mn(arr.shape[-2], mn, gran_mn)
    rows = arr[..., np.arange(mn) // g, :]
    packed = pack_ue8m0(rows)  # (..., mn, pk)
    pk = packed.shape[-1]
    stride = _align(mn, TMA_ALIGN)
    storage = np.zeros((*arr.shape[:-2], pk, stride), dtype=np.int32)
    storage[..., :mn] = packed.swapaxes(-1, -2)
    if flat:
        return storage.reshape(-1)
    return storage[..., :mn].swapaxes(-1, -2)


def deepgemm_scales_inverse(
    packed: Any, k: int, *, gran_mn: int = 1, mn: int | None = None
) -> np.ndarray:
    """Inverse of :func:`deepgemm_scales`: uint8 codes ``(..., ceil(mn / gran_mn), k)``.

    ``packed`` is the ``(..., mn, ceil(k / 4))`` array (any strides), or with ``mn`` given the
    flat storage (``flat=True``). With ``gran_mn > 1`` the broadcast rows of each group must be
    equal (they are when they came from 128×128 weight scales); otherwise it is an error.
    """
    arr = np.asarray(packed)
    pk = _ceil_div(k, 4)
    if mn is not None:
        if arr.ndim != 1:
            raise InputError("deepgemm_scales_inverse: mn is for the flat storage (1-D)")
        stride = _align(mn, TMA_ALIGN)
        if arr.size % (pk * stride):
            raise InputError(f"flat storage of {arr.size} words is not a whole (…, {pk}, {stride})")
        arr = arr.reshape(-1, pk, stride)[..., :mn].swapaxes(-1, -2)
        if arr.shape[0] == 1:
            arr = arr[0]
    if arr.ndim < 2:
        raise InputError(f"deepgemm_scales_inverse: expected (..., mn, {pk}), got {arr.shape}")
    rows = unpack_ue8m0(arr, k)
    if gran_mn == 1:
        return rows
    mn_ = rows.shape[-2]
    groups = _ceil_div(mn_, gran_mn)
    out = rows[..., ::gran_mn, :]
    expanded = out[..., np.arange(mn_) // gran_mn, :]
    if out.shape[-2] != groups or not np.array_equal(expanded, rows):
        raise InputError(f"rows within groups of {gran_mn} differ: not broadcast block scales")
    return np.ascontiguousarray(out)


# --- 128x128 blocks <-> 1x32 MX groups ------------------------------------------------------


def mx_relayout(
    codes: Any,
    shape: tuple[int, ...] | None = None,
    *,
    block: tuple[int, int] = (128, 128),
    group: int = 32,
) -> np.ndarray:
    """Block scale codes ``(..., ceil(N / 128), ceil(K / 128))`` → MX codes ``(..., N, ceil(K / 32))``.

    Each byte is repeated over the rows of its block and the 1×32 groups inside it, so the
    dequantized tensor is unchanged (the element bytes stay as they are). ``shape`` is the
    ``(..., N, K)`` shape of the quantized tensor (default: the blocks exactly filled).
    """
    arr = np.asarray(codes)
    if arr.ndim < 2:
        raise InputError(f"mx_relayout: expected at least 2-D codes, got {arr.shape}")
    br, bc = block
    if bc % group:
        raise InputError(f"mx_relayout: block columns {bc} are not a multiple of group {group}")
    rows, cols = arr.shape[-2:]
    n, k = (rows * br, cols * bc) if shape is None else (int(shape[-2]), int(shape[-1]))
    if rows != _ceil_div(n, br) or cols != _ceil_div(k, bc):
        raise InputError(f"mx_relayout: codes {arr.shape[-2:]} do not fit shape {(n, k)}")
    row_index = np.arange(n) // br
    col_index = (np.arange(_ceil_div(k, group)) * group) // bc
    return np.ascontiguousarray(arr[..., row_index, :][..., col_index])


def mx_relayout_inverse(
    mx_codes: Any, *, block: tuple[int, int] = (128, 128), group: int = 32
) -> np.ndarray:
    """Inverse of :func:`mx_relayout`: MX codes ``(..., N, G)`` → block codes.

    Meaningful only where each block's bytes are all equal (MX scales that came from 128×128
    blocks); anything else is an error naming the first differing block.
    """
    arr = np.asarray(mx_codes)
    if arr.ndim < 2:
        raise InputError(f"mx_relayout_inverse: expected at least 2-D codes, got {arr.shape}")
    br, bc = block
    if bc % group:
        raise InputError(f"block columns {bc} are not a multiple of group {group}")
    per_block = bc // group
    n, g = arr.shape[-2:]
    out = arr[..., ::br, ::per_block]
    back = mx_relayout(out, (n, g * group), block=block, group=group)
    if not np.array_equal(back, arr):
        diff = np.argwhere(back != arr)[0]
        where = (*diff[:-2], int(diff[-2]) // br, int(diff[-1]) // per_block)
        raise InputError(f"mx_relayout_inverse: bytes differ inside block {where}")
    return np.ascontiguousarray(out)
