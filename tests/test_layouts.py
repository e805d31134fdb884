"""Scale layouts: reference vectors P1/P2, slow per-entry oracles, and inverse round trips."""

from __future__ import annotations

import numpy as np
import pytest

from ue8m0 import dequantize, quantize
from ue8m0.errors import InputError, InputTypeError
from ue8m0.layouts import (
    as_codes,
    deepgemm_scales,
    deepgemm_scales_inverse,
    mx_relayout,
    mx_relayout_inverse,
    pack_ue8m0,
    swizzle_128x4,
    unpack_ue8m0,
    unswizzle_128x4,
)

RNG = np.random.default_rng(8)


def _codes(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# --- P1: DeepGEMM packing --------------------------------------------------------------------

P1_BYTES = np.array([0x77, 0x78, 0x7F, 0x69, 0x80, 0x01], dtype=np.uint8)
P1_WORDS = [0x697F7877, 0x00000180]


def test_p1_pack_one_row() -> None:
    assert pack_ue8m0(P1_BYTES).tolist() == P1_WORDS
    assert pack_ue8m0(P1_BYTES).dtype == np.int32


def test_p1_deepgemm_storage_offsets() -> None:
    codes = np.tile(P1_BYTES, (5, 1))
    out = deepgemm_scales(codes, 5)
    assert out.shape == (5, 2) and out.dtype == np.int32
    assert out.strides == (4, 4 * 8)  # MN-major, stride align(5, 4) = 8 words
    flat = deepgemm_scales(codes, 5, flat=True)
    assert flat.shape == (2 * 8,)
    for i in range(5):
        for j in range(2):
            assert flat[8 * j + i] == P1_WORDS[j] == out[i, j]
    assert flat[5:8].tolist() == [0, 0, 0] and flat[13:16].tolist() == [0, 0, 0]


def test_pack_matches_bit_shift_formula() -> None:
    codes = _codes(7, 11)
    words = pack_ue8m0(codes).astype(np.int64) & 0xFFFFFFFF
    for row in range(7):
        for j in range(3):
            group = [int(c) for c in codes[row, 4 * j : 4 * j + 4]] + [0, 0, 0]
            want = group[0] | group[1] << 8 | group[2] << 16 | group[3] << 24
            assert words[row, j] == want


@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (5,), (2, 9), (3, 2, 130), (1, 127)])
def test_pack_unpack_identity(shape: tuple[int, ...]) -> None:
    codes = _codes(*shape)
    packed = pack_ue8m0(codes)
    assert packed.shape == (*shape[:-1], -(-shape[-1] // 4))
    np.testing.assert_array_equal(unpack_ue8m0(packed, shape[-1]), codes)


def test_pack_accepts_power_of_two_floats() -> None:
    q = quantize(RNG.standard_normal((3, 300)).astype(np.float32), block=(1, 128))
    np.testing.assert_array_equal(pack_ue8m0(q.scale), pack_ue8m0(q.scale_codes))
    tiny = np.array([2.0**-127, 2.0**127, np.nan, 1.0], dtype=np.float32)
    assert as_codes(tiny).tolist() == [0, 254, 255, 127]
    with pytest.raises(InputError, match="power of two"):
        as_codes(np.array([1.5], dtype=np.float32))
    with pytest.raises(InputTypeError):
        as_codes(np.array(["a"]))


def test_unpack_rejects_wrong_width() -> None:
    with pytest.raises(InputError, match="words"):
        unpack_ue8m0(np.zeros((2, 3), np.int32), 5)


# --- P2: cuBLAS 128x4 swizzle ----------------------------------------------------------------


def _swizzle_oracle(codes: np.ndarray) -> np.ndarray:
    h, w = codes.shape
    cb = -(-w // 4)
    out = np.zeros(512 * -(-h // 128) * cb, dtype=np.uint8)
    for r in range(h):
        for c in range(w):
            blk = (r // 128) * cb + c // 4
            out[blk * 512 + (r % 128 % 32) * 16 + (r % 128 // 32) * 4 + c % 4] = codes[r, c]
    return out


def test_p2_swizzle_offset() -> None:
    codes = np.zeros((200, 6), dtype=np.uint8)
    codes[37, 5] = 0xAB
    flat = swizzle_128x4(codes)
    assert flat.shape == (2048,) and flat.dtype == np.uint8
    assert flat[597] == 0xAB and np.count_nonzero(flat) == 1


@pytest.mark.parametrize("shape", [(1, 1), (200, 6), (128, 4), (129, 5), (37, 3), (300, 9)])
def test_swizzle_matches_oracle_and_inverts(shape: tuple[int, int]) -> None:
    codes = _codes(*shape)
    flat = swizzle_128x4(codes)
    np.testing.assert_array_equal(flat, _swizzle_oracle(codes))
    np.testing.assert_array_equal(unswizzle_128x4(flat, *shape), codes)


def test_swizzle_batched() -> None:
    codes = _codes(3, 130, 7)
    flat = swizzle_128x4(codes)
    for e in range(3):
        np.testing.assert_array_equal(flat[e], _swizzle_oracle(codes[e]))
    np.testing.assert_array_equal(unswizzle_128x4(flat, 130, 7), codes)


def test_unswizzle_rejects_wrong_length() -> None:
    with pytest.raises(InputError, match="needs 2048"):
        unswizzle_128x4(np.zeros(512, np.uint8), 200, 6)


# --- DeepGEMM layout ---------------------------------------------------------------------------


def _deepgemm_oracle(codes: np.ndarray, mn: int, gran: int) -> np.ndarray:
    sf_k = codes.shape[-1]
    pk, stride = -(-sf_k // 4), -(-mn // 4) * 4
    flat = np.zeros(pk * stride, dtype=np.int64)
    for i in range(mn):
        for t in range(sf_k):
            flat[(t // 4) * stride + i] |= int(codes[i // gran, t]) << (8 * (t % 4))
    return flat.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize(("mn", "sf_k", "gran"), [(5, 6, 1), (7, 1, 1), (300, 9, 1), (300, 9, 128)])
def test_deepgemm_matches_oracle_and_inverts(mn: int, sf_k: int, gran: int) -> None:
    codes = _codes(-(-mn // gran), sf_k)
    flat = deepgemm_scales(codes, mn, flat=True)
    np.testing.assert_array_equal(flat, _deepgemm_oracle(codes, mn, gran))
    view = deepgemm_scales(codes, mn)
    assert view.shape == (mn, -(-sf_k // 4))
    np.testing.assert_array_equal(deepgemm_scales_inverse(view, sf_k, gran_mn=gran), codes)
    np.testing.assert_array_equal(deepgemm_scales_inverse(flat, sf_k, gran_mn=gran, mn=mn), codes)


def test_deepgemm_weight_scales_from_quantize() -> None:
    w = RNG.standard_normal((260, 300)).astype(np.float32)
    q = quantize(w)  # 128x128 blocks: scale grid (3, 3)
    out = deepgemm_scales(q.scale_codes, 260)
    rows = unpack_ue8m0(out, 3)
    np.testing.assert_array_equal(rows, q.scale_codes[np.arange(260) // 128])


def test_deepgemm_batched() -> None:
    codes = _codes(2, 6, 5)
    flat = deepgemm_scales(codes, 6, flat=True).reshape(2, -1)
    for e in range(2):
        np.testing.assert_array_equal(flat[e], _deepgemm_oracle(codes[e], 6, 1))
    np.testing.assert_array_equal(deepgemm_scales_inverse(deepgemm_scales(codes, 6), 5), codes)


def test_deepgemm_errors() -> None:
    with pytest.raises(InputError, match="gran_mn"):
        deepgemm_scales(_codes(3, 4), 200)
    rows = deepgemm_scales(_codes(130, 4), 130)
    with pytest.raises(InputError, match="differ"):
        deepgemm_scales_inverse(rows, 4, gran_mn=128)


# --- MX relayout -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(128, 128), (200, 300), (5, 40), (260, 1000)])
def test_mx_relayout_repeats_each_byte(n: int, k: int) -> None:
    codes = _codes(-(-n // 128), -(-k // 128))
    mx = mx_relayout(codes, (n, k))
    assert mx.shape == (n, -(-k // 32))
    for r in range(n):
        for g in range(mx.shape[1]):
            assert mx[r, g] == codes[r // 128, (g * 32) // 128]
    np.testing.assert_array_equal(mx_relayout_inverse(mx), codes)


def test_mx_relayout_dequantizes_the_same() -> None:
    w = RNG.standard_normal((130, 200)).astype(np.float32)
    q = quantize(w)
    mx = mx_relayout(q.scale_codes, w.shape)
    scale = np.ldexp(np.float32(1), mx.astype(np.int32) - 127)
    values = q.data.astype(np.float32) * np.repeat(scale, 32, axis=1)[:, :200]
    np.testing.assert_array_equal(values, dequantize(q))


def test_mx_relayout_errors() -> None:
    with pytest.raises(InputError, match="do not fit"):
        mx_relayout(_codes(2, 2), (100, 100))
    mx = mx_relayout(_codes(1, 1), (4, 128))
    mx[1, 2] ^= 1
    with pytest.raises(InputError, match=r"block \(0, 0\)"):
        mx_relayout_inverse(mx)
