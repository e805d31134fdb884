"""Every code of every format decodes as ml_dtypes decodes it, and survives encode(decode(code))."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from ue8m0 import reference
from ue8m0.errors import FormatNameError
from ue8m0.formats import (
    ELEMENT_FORMATS,
    UE8M0,
    ElementFormat,
    decode_code,
    decode_table,
    element_format,
)


def _all_codes(fmt: ElementFormat) -> np.ndarray:
    return np.arange(1 << fmt.bits, dtype=np.uint8)


@pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=str)
def test_every_code_decodes_like_ml_dtypes(fmt: ElementFormat) -> None:
    codes = _all_codes(fmt)
    theirs = codes.view(fmt.dtype).astype(np.float64)
    ours = np.array([decode_code(fmt, int(c)) for c in codes])
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = ~np.isnan(ours)
    assert np.array_equal(ours[finite], theirs[finite])
    assert np.array_equal(np.signbit(ours[finite]), np.signbit(theirs[finite]))
    assert np.array_equal(decode_table(fmt).astype(np.float64)[finite], ours[finite])


@pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=str)
def test_every_code_survives_encode_decode(fmt: ElementFormat) -> None:
    codes = _all_codes(fmt)
    values = decode_table(fmt)[codes]
    again = reference.encode(values, fmt)
    nan = np.isnan(values)
    finite = np.isfinite(values)
    assert np.array_equal(again[finite], codes[finite])
    if fmt.has_nan:
        assert set(again[nan].tolist()) == {fmt.nan_code}
    if fmt.has_inf:  # +-inf saturate to +-max: there is no overflow to inf when encoding
        inf = np.isinf(values)
        assert set(again[inf].tolist()) == {fmt.code_of_max, fmt.code_of_max | fmt.sign_mask}


@pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=str)
def test_derived_properties_match_finfo(fmt: ElementFormat) -> None:
    fi = ml_dtypes.finfo(fmt.dtype)
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert decode_code(fmt, fmt.code_of_max) == fmt.max
    assert fmt.emax == math.floor(math.log2(fmt.max))
    assert fmt.has_inf == bool(np.isinf(_all_codes(fmt).view(fmt.dtype).astype(np.float32)).any())
    nan_codes = np.flatnonzero(np.isnan(_all_codes(fmt).view(fmt.dtype).astype(np.float32)))
    assert fmt.nan_codes == tuple(int(c) for c in nan_codes)
    if fmt.nan_code is not None:
        assert fmt.nan_code in fmt.nan_codes
        assert np.array(np.nan, np.float32).astype(fmt.dtype).view(np.uint8) == fmt.nan_code


@pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=str)
def test_encode_matches_ml_dtypes_cast_inside_the_range(fmt: ElementFormat) -> None:
    """Inside [-max, max] ml_dtypes' cast is RNE like ours (it only differs by not saturating)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * fmt.max / 3).astype(np.float32)
    x = np.concatenate([x, decode_table(fmt)[~np.isnan(decode_table(fmt))]])
    # midpoints between neighbouring codes: ties must go to even
    values = np.unique(decode_table(fmt)[np.isfinite(decode_table(fmt))].astype(np.float64))
    x = np.concatenate([x, ((values[1:] + values[:-1]) / 2).astype(np.float32)])
    x = x[np.abs(x) <= fmt.max]
    ours = reference.encode(x, fmt)
    theirs = x.astype(fmt.dtype).view(np.uint8)
    if not fmt.has_negative_zero:  # ml_dtypes also writes +0 for -0 in FNUZ
        assert np.array_equal(ours, theirs)
    else:
        assert np.array_equal(ours, theirs)


def test_encode_saturates_where_ml_dtypes_does_not() -> None:
    fmt = element_format("e4m3")
    x = np.array([449, 464, 464.1, 480, 1e6, np.inf, -np.inf, -1e9], np.float32)
    assert reference.encode(x, fmt).tolist() == [0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0xFE]
    assert np.isnan(x[2:6].astype(ml_dtypes.float8_e4m3fn).astype(np.float32)).all()


def test_ue8m0_every_byte() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ours = reference.decode_scale_bytes(codes)
    theirs = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.array_equal(ours[:255].view(np.uint32), theirs[:255].view(np.uint32))
    assert [UE8M0.decode(int(c)) for c in codes[:255]] == ours[:255].astype(np.float64).tolist()
    assert math.isnan(UE8M0.decode(255))
    assert ours[0] == np.float32(2.0**-127) and ours[254] == np.float32(2.0**127)
    # a block whose amax is exactly 448 * scale gets that scale back (every byte whose amax is finite)
    amax = (ours[:247].astype(np.float64) * 448).astype(np.float32)
    assert np.array_equal(
        reference.scale_bytes(amax, element_format("e4m3"), _rceil()), codes[:247]
    )
    assert (UE8M0.nan_code, UE8M0.max_code, UE8M0.min_exponent, UE8M0.max_exponent) == (
        255,
        254,
        -127,
        127,
    )


def _rceil():  # type: ignore[no-untyped-def]
    from ue8m0.policies import ScaleRule

    return ScaleRule.RCEIL


@pytest.mark.parametrize("name", ["e4m3", "E4M3", "float8_e4m3fn", "fp8"])
def test_aliases(name: str) -> None:
    assert element_format(name).name == "float8_e4m3fn"


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(FormatNameError, match=r"unknown element format 'e3m4'.*float8_e4m3fn"):
        element_format("e3m4")
