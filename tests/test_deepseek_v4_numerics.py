"""DeepSeek-V4 numerics: packed FP4 (E2M1, UE8M0 per 32), V4's FP4 rule, V4's FP4 -> FP8 cast.

Every fast path is compared bit for bit with its slow scalar oracle (exhaustive where cheap,
hypothesis for shapes), plus named edge cases whose expected bytes follow from the formats.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ue8m0
from ue8m0 import deepseek_v4 as v4
from ue8m0.errors import InputError, InputTypeError, NonFiniteError
from ue8m0.formats import FLOAT8_E4M3FN, decode_table
from ue8m0.fp4 import (
    E2M1_VALUES,
    dequantize_fp4,
    dequantize_fp4_oracle,
    pack_fp4,
    unpack_fp4,
)

BF16 = np.dtype(ml_dtypes.bfloat16)
MAGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float array (compares -0/+0 and NaN payloads too)."""
    return a.view(np.uint16 if a.dtype == BF16 else np.uint32)


def assert_same_cast(got: v4.Fp8Cast, want: v4.Fp8Cast) -> None:
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_array_equal(got.scale_bytes, want.scale_bytes)
    np.testing.assert_array_equal(got.lossy.indices, want.lossy.indices)
    np.testing.assert_array_equal(got.lossy.max_abs_error, want.lossy.max_abs_error)


def both_casts(p: np.ndarray, s: np.ndarray, **kw: str) -> v4.Fp8Cast:
    got = v4.cast_fp4_to_fp8_v4(p, s, **kw)
    assert_same_cast(got, v4.cast_fp4_to_fp8_v4_oracle(p, s, **kw))
    return got


def packed_of(codes: np.ndarray) -> np.ndarray:
    return pack_fp4(codes.astype(np.uint8))


# ----------------------------------------------------------------------------- pack / unpack


def test_nibble_order_on_hand_written_bytes() -> None:
    """Byte 0x21 holds codes 1 (low nibble, element 0) and 2: values [0.5, 1.0]."""
    p = np.array([[0x21, 0x8F, 0x70]], dtype=np.uint8).view(np.int8)
    assert unpack_fp4(p).tolist() == [[1, 2, 15, 8, 0, 7]]
    values = E2M1_VALUES[unpack_fp4(p)]
    assert values.tolist() == [[0.5, 1.0, -6.0, -0.0, 0.0, 6.0]]
    assert np.signbit(values[0, 3]) and not np.signbit(values[0, 4])
    assert pack_fp4(np.array([1, 2, 15, 8], np.uint8)).view(np.uint8).tolist() == [0x21, 0x8F]


def test_pack_unpack_round_trip_every_byte() -> None:
    every = np.arange(256, dtype=np.uint8).reshape(2, 4, 32)
    codes = unpack_fp4(every)
    assert codes.shape == (2, 4, 64) and codes.max() == 15
    packed = pack_fp4(codes)
    assert packed.dtype == np.int8
    np.testing.assert_array_equal(packed.view(np.uint8), every)


def test_e2m1_table_matches_the_format() -> None:
    np.testing.assert_array_equal(bits(E2M1_VALUES), bits(decode_table(ue8m0.FLOAT4_E2M1FN)))
    assert E2M1_VALUES[:8].tolist() == list(MAGS)


@pytest.mark.parametrize(
    ("codes", "error"),
    [
        (np.array([1, 2, 3], np.uint8), InputError),
        (np.array([1, 16], np.uint8), InputError),
        (np.array([1, 2], np.int32), InputTypeError),
    ],
)
def test_pack_refuses_bad_codes(codes: np.ndarray, error: type) -> None:
    with pytest.raises(error):
        pack_fp4(codes)


# ----------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_dequantize_every_code_at_every_scale_byte(dtype: type) -> None:
    """256 rows (one per scale byte, 0xFF included) x all 256 packed bytes."""
    p = np.tile(np.arange(256, dtype=np.uint8), (256, 1))  # [256, 256] -> 512 inputs per row
    s = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 16, axis=1)
    got = dequantize_fp4(p, s, dtype, nonfinite="propagate")
    want = dequantize_fp4_oracle(p, s, dtype, nonfinite="propagate")
    assert got.dtype == np.dtype(dtype) and got.shape == (256, 512)
    np.testing.assert_array_equal(bits(got), bits(want))
    assert np.isnan(got[255].astype(np.float32)).all()


@pytest.mark.parametrize(
    ("byte", "code", "value"),
    [
        (127, 0x1, 0.5),
        (127, 0x8, -0.0),
        (127, 0xF, -6.0),
        (0, 0x1, 2.0**-128),  # a float32 subnormal, exact
        (1, 0x7, 6.0 * 2.0**-126),
        (200, 0x5, 3.0 * 2.0**73),
        (254, 0x7, math.inf),  # 6 * 2**127 overflows float32
        (253, 0x6, math.inf),  # 4 * 2**126 = 2**128
        (253, 0xD, -3.0 * 2.0**126),
    ],
)
def test_dequantize_named_values(byte: int, code: int, value: float) -> None:
    p = np.full((1, 16), code | (code << 4), np.uint8)
    s = np.array([[byte]], np.uint8).view(ml_dtypes.float8_e8m0fnu)
    got = dequantize_fp4(p, s)
    expected = np.full((1, 32), value, np.float32)
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_dequantize_batch_dims_and_bf16_rounding() -> None:
    rng = np.random.default_rng(3)
    p = rng.integers(0, 256, (3, 5, 48), dtype=np.uint8).view(np.int8)
    s = rng.integers(60, 200, (3, 5, 3), dtype=np.uint8)
    for dtype in (np.float32, BF16):
        got = dequantize_fp4(p, s, dtype)
        np.testing.assert_array_equal(bits(got), bits(dequantize_fp4_oracle(p, s, dtype)))
    # every FP4 value times a power of two is exact in bfloat16 too
    f32 = dequantize_fp4(p, s)
    np.testing.assert_array_equal(dequantize_fp4(p, s, BF16).astype(np.float32), f32)


def test_dequantize_nan_scale_raises_by_default() -> None:
    p = np.zeros((2, 32), np.uint8)
    s = np.array([[127, 127], [127, 255]], np.uint8)
    for fn in (dequantize_fp4, dequantize_fp4_oracle):
        with pytest.raises(InputError, match=r"0xFF \(NaN\) at index \(1, 1\)"):
            fn(p, s, name="layers.0.ffn.experts.3.w1.weight")
    out = dequantize_fp4(p, s, nonfinite="propagate")
    assert np.isnan(out[1, 32:]).all() and not np.isnan(out[:, :32]).any()


@pytest.mark.parametrize(
    ("packed_shape", "scale_shape", "match"),
    [
        ((4, 16), (4, 2), r"scale shape \(4, 2\) does not match .* expected \(4, 1\)"),
        ((4, 16), (3, 1), r"expected \(4, 1\)"),
        ((4, 8), (4, 1), r"16 inputs per row"),
        ((2, 4, 16), (4, 1), r"expected \(2, 4, 1\)"),
        ((16,), (1,), r"\[\.\.\., out, in/2\]"),
    ],
)
def test_dequantize_shape_errors(
    packed_shape: tuple[int, ...], scale_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        dequantize_fp4(np.zeros(packed_shape, np.int8), np.zeros(scale_shape, np.uint8))


def test_dequantize_dtype_errors() -> None:
    with pytest.raises(InputTypeError, match="int8 or uint8"):
        dequantize_fp4(np.zeros((1, 16), np.int16), np.zeros((1, 1), np.uint8))
    with pytest.raises(InputTypeError, match="uint8 or float8_e8m0fnu"):
        dequantize_fp4(np.zeros((1, 16), np.int8), np.zeros((1, 1), np.float32))
    with pytest.raises(ue8m0.FormatNameError):
        dequantize_fp4(np.zeros((1, 16), np.int8), np.zeros((1, 1), np.uint8), np.float16)


# ----------------------------------------------------------------------------- the FP4 rule


def assert_same_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    got = v4.quantize_fp4_v4(x)
    want = v4.quantize_fp4_v4_oracle(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int8 and got[1].dtype == np.uint8
    assert got[0].shape == (*x.shape[:-1], x.shape[-1] // 2)
    assert got[1].shape == (*x.shape[:-1], x.shape[-1] // 32)
    return got


def test_quantize_every_finite_bf16_pattern_in_groups() -> None:
    """All finite bf16 patterns, 32 neighbours to a group: the element rounding at every scale."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)
    x = np.where(np.isfinite(x.astype(np.float32)), x, ml_dtypes.bfloat16(0)).reshape(-1, 64)
    assert_same_quantize(x)


def test_scale_byte_of_every_bf16_magnitude() -> None:
    """Each positive finite bf16 as a group's amax: fast bytes vs the scalar rule."""
    mags = np.arange(0x7F80, dtype=np.uint16).view(ml_dtypes.bfloat16)
    x = np.zeros((mags.size, 32), dtype=BF16)
    x[:, 5] = -mags
    _, sbytes = v4.quantize_fp4_v4(x)
    want = [v4.v4_scale_byte(float(m)) for m in mags.astype(np.float32)]
    np.testing.assert_array_equal(sbytes[:, 0], np.array(want, np.uint8))
    assert sbytes.min() == 1  # the floor 6 * 2**-126 gives 2**-126, never byte 0


@pytest.mark.parametrize("exponent", [-126, -100, -3, -1, 0, 1, 2, 3, 40, 127])
def test_division_by_6_and_the_fl32_reciprocal_give_one_ceiling(exponent: int) -> None:
    """Every float32 of a binade: ``ceil_bits(a / 6) == ceil_bits(a * fl32(1/6))``, which makes
    ue8m0's rceil (a division) the V4 rule (a multiplication)."""
    a = np.ldexp(1.0 + np.arange(1 << 23, dtype=np.float64) / (1 << 23), exponent)
    a = a.astype(np.float32)

    def ceil_bits(r: np.ndarray) -> np.ndarray:
        b = r.view(np.uint32).astype(np.int64)
        return (b >> 23) + ((b & 0x7FFFFF) != 0)

    div = ceil_bits(a / np.float32(6))
    mul = ceil_bits(a * np.float32(v4.INV6))
    assert np.array_equal(div, mul)


def test_reciprocal_constants() -> None:
    assert np.float32(v4.INV6).view(np.uint32) == 0x3E2AAAAB
    assert v4.AMAX_FLOOR == 6.0 * 2.0**-126
    assert np.float32(v4.AMAX_FLOOR) * np.float32(v4.INV6) == np.float32(2.0**-126)


# each row: one group (the listed values then zeros) -> scale byte, codes of the listed values
QUANT_VECTORS = {
    "ties at scale 1 (amax 6)": (
        [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -5.0],
        127,
        [7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 14],
    ),
    "just off the ties": (
        [6.0, 0.2500001, 0.7499999, 1.2500001, 1.7499999, 2.5000002, 3.4999998, 5.0000005],
        127,
        [7, 1, 1, 3, 3, 5, 5, 7],
    ),
    "saturation: amax a hair above 6 takes scale 2": (
        [6.0000005, 5.9999995, -6.0000005],
        128,
        [5, 5, 13],
    ),
    "amax 4 keeps scale 1": ([4.0, 0.5, -1.5, 2.9], 127, [6, 1, 11, 5]),
    "amax 3 halves the scale": ([3.0, 0.25, -2.9], 126, [7, 1, 15]),
    "signed zeros and small negatives": ([1.5, -0.0, 0.0, -0.01, 0.01], 125, [7, 8, 0, 8, 0]),
    "all zero: the floor gives byte 1": ([0.0, -0.0], 1, [0, 8]),
    "below the floor": ([2.0**-130, -1e-40, 6.0 * 2.0**-127], 1, [0, 8, 5]),
    "at the floor": ([6.0 * 2.0**-126, 2.0**-127], 1, [7, 1]),
    "largest float32 (amax/s just under 4)": ([3.4028235e38, -1.0], 253, [6, 8]),
    "outlier flushes the rest": ([1e30, 1e25, -1e20, 1.0], 225, [5, 0, 8, 0]),
}


@pytest.mark.parametrize("name", QUANT_VECTORS)
def test_quantize_named_vectors(name: str) -> None:
    values, byte, codes = QUANT_VECTORS[name]
    x = np.zeros((1, 32), np.float32)
    x[0, : len(values)] = values
    packed, sbytes = assert_same_quantize(x)
    assert int(sbytes[0, 0]) == byte
    assert unpack_fp4(packed)[0, : len(codes)].tolist() == codes


def test_quantize_random_magnitudes_and_dtypes() -> None:
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, 16, 128))
    x = base * np.exp2(rng.integers(-140, 120, (4, 16, 4, 1))).repeat(32, axis=-1).reshape(
        base.shape
    )
    for dtype in (np.float32, BF16, np.float16):
        with np.errstate(over="ignore", under="ignore"):
            arr = x.astype(np.float32).astype(dtype)
        arr = np.where(np.isfinite(arr.astype(np.float32)), arr, np.zeros((), dtype))
        assert_same_quantize(arr)


def test_quantize_nonfinite_and_shape_errors() -> None:
    x = np.zeros((2, 64), np.float32)
    x[1, 40] = np.nan
    for fn in (v4.quantize_fp4_v4, v4.quantize_fp4_v4_oracle):
        with pytest.raises(NonFiniteError, match=r"block \(1, 1\)"):
            fn(x)
        with pytest.raises(InputError, match="multiple of 32"):
            fn(np.zeros((2, 48), np.float32), name="w1")


def test_round_trip_reproduces_the_bytes() -> None:
    """quantize(dequantize(p, s)) == (p, s) when each group's largest magnitude is 4 or 6 (the
    rule's amax) and its scale keeps 6 * s finite; code 8 decodes to -0.0 and comes back as 8."""
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 16, (3, 64, 256), dtype=np.uint8)
    codes[..., ::32] = rng.choice([6, 7, 14, 15], codes[..., ::32].shape)
    codes[..., 1::32] = 8
    p = pack_fp4(codes)
    s = rng.integers(1, 253, (3, 64, 8), dtype=np.uint8)
    for dtype in (np.float32, BF16):
        back = v4.quantize_fp4_v4(dequantize_fp4(p, s, dtype))
        np.testing.assert_array_equal(back[0], p)
        np.testing.assert_array_equal(back[1], s)


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    rows=st.integers(1, 9),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, BF16, np.float16]),
)
def test_quantize_shapes(
    lead: list[int], rows: int, groups: int, seed: int, dtype: np.dtype
) -> None:
    rng = np.random.default_rng(seed)
    shape = (*lead, rows, 32 * groups)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-20, 12, shape))
    assert_same_quantize(x.astype(np.float32).astype(dtype))


# ----------------------------------------------------------------------------- the FP4 -> FP8 cast


def independent_lossy(codes: np.ndarray, s: np.ndarray) -> list[tuple[int, int]]:
    """Lossy tiles counted another way: each element's ``magnitude * 2**d`` through ml_dtypes'
    e4m3 cast, plus DeepSeek's tile byte that cannot hold ``2**(bmax - 133)`` below byte 6."""
    mag = np.array(MAGS)[codes & 7]
    bg = np.repeat(s.astype(np.int64), 32, axis=1)
    found = []
    for ti in range(-(-codes.shape[0] // 128)):
        for tj in range(-(-codes.shape[1] // 128)):
            m = mag[ti * 128 : (ti + 1) * 128, tj * 128 : (tj + 1) * 128]
            g = bg[ti * 128 : (ti + 1) * 128, tj * 128 : (tj + 1) * 128]
            y = m * np.exp2(g - g.max() + 6.0)
            exact = y.astype(ml_dtypes.float8_e4m3fn).astype(np.float64) == y
            if (m > 0).any() and (g.max() < 6 or not exact.all()):
                found.append((ti, tj))
    return found


def spread_tiles(spreads: range, low_codes: np.ndarray, top: int = 140) -> tuple[np.ndarray, ...]:
    """One 128x128 tile per spread, side by side: group 0 of row 0 has byte ``top`` and code 7
    (6.0); every other group has byte ``top - spread`` and codes drawn from ``low_codes``."""
    rng = np.random.default_rng(len(spreads) + int(low_codes.sum()))
    n = len(spreads)
    codes = rng.choice(low_codes, (128, 128 * n)).astype(np.uint8)
    s = np.zeros((128, 4 * n), np.uint8)
    for k, spread in enumerate(spreads):
        s[:, 4 * k : 4 * k + 4] = top - spread
        s[0, 4 * k] = top
        codes[0, 128 * k : 128 * k + 32] = 7
    return codes, s


def test_cast_random_codes_and_scales() -> None:
    rng = np.random.default_rng(7)
    for lo, hi in [(100, 140), (0, 255), (0, 8), (240, 255), (120, 128)]:
        for shape in [(256, 256), (200, 352), (128, 32)]:
            p = rng.integers(0, 256, (shape[0], shape[1] // 2), dtype=np.uint8)
            s = rng.integers(lo, hi, (shape[0], shape[1] // 32), dtype=np.uint8)
            got = both_casts(p.view(np.int8), s.view(ml_dtypes.float8_e8m0fnu))
            assert got.codes.shape == shape and got.codes.dtype == np.uint8
            assert got.scale_bytes.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
            found = [tuple(ij) for ij in got.lossy.indices.tolist()]
            assert found == independent_lossy(unpack_fp4(p), s)


def test_cast_spreads_up_to_14_binades_are_exact() -> None:
    codes, s = spread_tiles(range(15), np.arange(16))
    got = both_casts(pack_fp4(codes), s)
    assert got.lossy.count == 0 and not got.lossy.max_abs_error.any()
    assert (got.scale_bytes == 140 - 6).all()
    decoded = decode_table(FLOAT8_E4M3FN)[got.codes].astype(np.float64) * 2.0 ** (134 - 127)
    np.testing.assert_array_equal(decoded, dequantize_fp4(pack_fp4(codes), s).astype(np.float64))


def test_cast_spreads_of_15_to_40_binades_are_lossy_and_counted() -> None:
    spreads = range(15, 41)
    codes, s = spread_tiles(spreads, np.arange(16))  # 0.5 in every low group: never exact
    got = both_casts(pack_fp4(codes), s)
    assert got.lossy.count == 26
    assert [tuple(i) for i in got.lossy.indices.tolist()] == independent_lossy(codes, s)
    # only magnitude 4 below the top: 4 * 2**(6 - spread) is an e4m3 value down to 2**-9
    codes, s = spread_tiles(spreads, np.array([0, 6, 8, 14]))
    got = both_casts(pack_fp4(codes), s)
    lossy = [int(j) for _, j in got.lossy.indices]
    assert lossy == [k for k, spread in enumerate(spreads) if spread >= 18]
    assert [tuple(i) for i in got.lossy.indices.tolist()] == independent_lossy(codes, s)
    for k, spread in enumerate(spreads):  # from 18 binades on, every 4 flushes to zero
        want = 4.0 * 2.0 ** (140 - spread - 127) if spread >= 18 else 0.0
        assert got.lossy.max_abs_error[0, k] == want


def test_cast_code_8_and_flushed_negatives() -> None:
    """DeepSeek reads code 8 as +0.0 (e4m3 0x00); a negative that flushes keeps its sign."""
    codes = np.zeros((128, 128), np.uint8)
    codes[0, :4] = [7, 8, 15, 1]  # group 0, byte 140: 384, +0, -384, 32
    codes[1, 32:36] = [8, 9, 1, 15]  # group 1, byte 110: 2**-11 and smaller flush
    s = np.full((128, 4), 110, np.uint8)
    s[0, 0] = 140
    s[1, 1] = 110
    got = both_casts(pack_fp4(codes), s)
    assert got.scale_bytes.tolist() == [[134]]
    assert got.codes[0, :4].tolist() == [0x7C, 0x00, 0xFC, 0x60]
    assert got.codes[1, 32:36].tolist() == [0x00, 0x80, 0x00, 0x80]
    assert got.lossy.count == 1
    assert got.lossy.max_abs_error[0, 0] == 6.0 * 2.0 ** (110 - 127)


def test_cast_zero_groups_low_bytes_and_outliers() -> None:
    zeros = np.zeros((128, 256), np.uint8)
    s = np.full((128, 8), 3, np.uint8)
    s[:, 4:] = 120
    s[7, 5] = 254  # an outlier group: its tile's byte is 248, everything else in it flushes
    zeros[3, 100] = 8  # -0 is still zero
    got = both_casts(pack_fp4(zeros), s)
    assert got.scale_bytes.tolist() == [[0, 248]] and got.lossy.count == 0
    codes = zeros.copy()
    codes[0, 0] = 1  # a nonzero in a tile whose group bytes are all < 6
    codes[0, 200] = 3  # a 1.5 at byte 120, 134 binades under the outlier
    got = both_casts(pack_fp4(codes), s)
    assert [tuple(i) for i in got.lossy.indices.tolist()] == [(0, 0), (0, 1)]
    assert [tuple(i) for i in got.lossy.indices.tolist()] == independent_lossy(codes, s)
    # DeepSeek stores 2**-127 for a tile it computed at 2**(3 - 133): 0.5 * 2**-124 -> 32 * 2**-127
    assert got.codes[0, 0] == 0x60
    assert got.lossy.max_abs_error[0, 0] == 32.0 * 2.0**-127 - 0.5 * 2.0**-124
    assert got.lossy.max_abs_error[0, 1] == 1.5 * 2.0 ** (120 - 127)


def test_cast_nan_scale() -> None:
    rng = np.random.default_rng(9)
    p = rng.integers(0, 256, (256, 128), dtype=np.uint8)
    s = rng.integers(100, 140, (256, 8), dtype=np.uint8)
    s[130, 5] = 255
    for fn in (v4.cast_fp4_to_fp8_v4, v4.cast_fp4_to_fp8_v4_oracle):
        with pytest.raises(InputError, match=r"0xFF \(NaN\) at row 130, group 5 \(tile 1, 1\)"):
            fn(p, s, name="layers.2.ffn.experts.0.w2.weight")
    got = both_casts(p, s, nonfinite="propagate")
    assert got.scale_bytes[1, 1] == 255 and (got.codes[128:, 128:] == 0x7F).all()
    assert np.isnan(got.lossy.max_abs_error[1, 1]) and (1, 1) not in got.lossy.indices.tolist()
    clean = v4.cast_fp4_to_fp8_v4(p[:128], s[:128])
    np.testing.assert_array_equal(got.codes[:128], clean.codes)


def test_cast_bytes_equal_ue8m0s_own_e4m3_encoding() -> None:
    """Where each tile's top group holds a +-4 or +-6, ue8m0.quantize of the dequantized weight
    (rceil, 128x128) picks the same tile byte and, up to code 8's sign, the same codes; and
    ml_dtypes' e4m3 cast of DeepSeek's float32 products gives the same codes everywhere."""
    rng = np.random.default_rng(13)
    codes = rng.integers(0, 16, (256, 384), dtype=np.uint8)
    s = rng.integers(20, 120, (256, 12), dtype=np.uint8)
    tile_max = s.reshape(2, 128, 3, 4).max(axis=(1, 3))
    for ti in range(2):
        for tj in range(3):
            r, g = np.argwhere(
                s[ti * 128 : (ti + 1) * 128, tj * 4 : tj * 4 + 4] == tile_max[ti, tj]
            )[0]
            codes[ti * 128 + r, (tj * 4 + g) * 32] = rng.choice([6, 7, 14, 15])
    p = pack_fp4(codes)
    got = both_casts(p, s)
    assert got.lossy.count > 0  # spreads up to 100 binades: some tiles round
    q = ue8m0.quantize(dequantize_fp4(p, s), block=(128, 128), fmt="e4m3", eps=0.0)
    np.testing.assert_array_equal(q.scale_codes, got.scale_bytes)
    np.testing.assert_array_equal(np.where(codes == 8, 0x00, q.codes), got.codes)
    table = np.array([*MAGS, 0.0, *(-m for m in MAGS[1:])], np.float32)
    d = (
        np.repeat(s.astype(np.int64), 32, axis=1)
        - np.repeat(np.repeat(tile_max, 128, axis=0), 128, axis=1)
        + 6
    )
    products = table[codes] * np.exp2(d).astype(np.float32)
    np.testing.assert_array_equal(
        products.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), got.codes
    )


def test_cast_shape_errors() -> None:
    with pytest.raises(InputError, match=r"one \[out, in/2\] matrix"):
        v4.cast_fp4_to_fp8_v4(np.zeros((2, 128, 64), np.int8), np.zeros((2, 128, 4), np.uint8))
    with pytest.raises(InputError, match=r"expected \(128, 4\)"):
        v4.cast_fp4_to_fp8_v4(np.zeros((128, 64), np.int8), np.zeros((128, 2), np.uint8))


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(1, 260),
    groups=st.integers(1, 10),
    top=st.integers(0, 254),
    spread=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_cast_shapes_and_spreads(rows: int, groups: int, top: int, spread: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 256, (rows, 16 * groups), dtype=np.uint8)
    s = rng.integers(max(top - spread, 0), top + 1, (rows, groups), dtype=np.uint8)
    got = both_casts(p, s)
    found = [tuple(ij) for ij in got.lossy.indices.tolist()]
    assert found == independent_lossy(unpack_fp4(p), s)
