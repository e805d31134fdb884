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
from ue8m0.formats import decode_table
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
