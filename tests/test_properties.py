"""Hypothesis properties of quantize/dequantize (numpy oracle and the default backend)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ue8m0
from ue8m0.formats import ELEMENT_FORMATS, ElementFormat

POW2_RULES = ["rceil", "log2", "floor", "ceil", "even"]
BLOCKS = [(1, 1), (1, 4), (2, 3), (4, 4), (1, 32), (8, 16), (1, -1), (-1, -1)]


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 12))
    cols = draw(st.integers(1, 40))
    exponent = draw(st.integers(-40, 40))
    base = draw(
        hnp.arrays(
            np.float32, (rows, cols), elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
        )
    )
    return (base * np.float32(2.0**exponent)).astype(np.float32)


def _ulp_bound(fmt: ElementFormat, scaled: np.ndarray) -> np.ndarray:
    """Half an ulp of ``fmt`` at each (scaled) value."""
    mag = np.abs(scaled.astype(np.float64))
    _, e = np.frexp(mag)
    exponent = np.maximum(e - 1, fmt.emin)
    return np.ldexp(0.5, exponent - fmt.mbits)


@settings(max_examples=150, deadline=None)
@given(
    x=tensors(),
    block=st.sampled_from(BLOCKS),
    rule=st.sampled_from([*POW2_RULES, "fp32"]),
    fmt=st.sampled_from(ELEMENT_FORMATS),
)
def test_error_within_half_ulp_at_block_scale(
    x: np.ndarray, block: tuple[int, int], rule: str, fmt: ElementFormat
) -> None:
    q = ue8m0.quantize(x, block=block, fmt=fmt, scale_rule=rule, backend="reference")
    y = ue8m0.dequantize(q).astype(np.float64)
    from ue8m0.reference import expand_scale

    scale = expand_scale(q.scale, x.shape, q.block).astype(np.float64)
    if rule == "fp32":  # non-power-of-two: work on the scaled values as the quantizer saw them
        mult = np.where(scale == 0, 0, (np.float32(1) / scale.astype(np.float32))).astype(
            np.float32
        )
        scaled = (x * mult).astype(np.float64)
        assume_ok = scale > 0
        got = q.data.astype(np.float64)
    else:
        scaled = x.astype(np.float64) / scale
        assume_ok = scale > 2.0**-120  # dequantized products stay float32 normals
        got = y / scale
    unsaturated = (np.abs(scaled) <= fmt.max) & assume_ok
    err = np.abs(got - scaled)
    assert np.all(err[unsaturated] <= _ulp_bound(fmt, scaled)[unsaturated])
    # saturated elements sit exactly at +-max
    sat = (np.abs(scaled) > fmt.max) & assume_ok
    assert np.all(np.abs(q.data.astype(np.float64))[sat] == fmt.max)


@settings(max_examples=150, deadline=None)
@given(
    x=tensors(),
    block=st.sampled_from(BLOCKS),
    fmt=st.sampled_from(ELEMENT_FORMATS),
    eps=st.sampled_from([0.0, 1e-4]),
)
def test_rceil_never_saturates(
    x: np.ndarray, block: tuple[int, int], fmt: ElementFormat, eps: float
) -> None:
    q = ue8m0.quantize(x, block=block, fmt=fmt, scale_rule="rceil", eps=eps)
    from ue8m0.reference import expand_scale

    scale = expand_scale(q.scale, x.shape, q.block).astype(np.float64)
    assert np.all(np.abs(x.astype(np.float64)) / scale <= fmt.max)


@settings(max_examples=150, deadline=None)
@given(x=tensors(), block=st.sampled_from(BLOCKS), fmt=st.sampled_from(ELEMENT_FORMATS))
def test_rceil_requantize_is_stable(
    x: np.ndarray, block: tuple[int, int], fmt: ElementFormat
) -> None:
    """Quantizing a dequantized rceil result again gives the same values, and the same bytes
    except in blocks whose largest element rounded down to exactly m/2 (the scale then halves and
    every code doubles: the same values in other bytes, e.g. 449 -> 448 under e4m3)."""
    q = ue8m0.quantize(x, block=block, fmt=fmt, scale_rule="rceil")
    y = ue8m0.dequantize(q)
    q2 = ue8m0.quantize(y, block=block, fmt=fmt, scale_rule="rceil")
    assert np.array_equal(ue8m0.dequantize(q2), y)
    from ue8m0.reference import _to_blocks

    codes_max = np.abs(_to_blocks(q.data.astype(np.float32), q.block)[0]).max(axis=-1)
    halved = (codes_max == fmt.max / 2).reshape(q.scale.shape) | (q.scale == 2.0**-127)
    assert q2.scale_codes is not None and q.scale_codes is not None
    same = ~halved
    assert np.array_equal(q2.scale_codes[same], q.scale_codes[same])
    from ue8m0.reference import expand_scale

    keep = expand_scale(same, x.shape, q.block)
    assert np.array_equal(q2.codes[keep], q.codes[keep])


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(2, 64), elements=st.floats(-1e4, 1e4, width=32)),
    rule=st.sampled_from([*POW2_RULES, "fp32"]),
    fmt=st.sampled_from(ELEMENT_FORMATS),
)
def test_monotone_within_a_block(values: np.ndarray, rule: str, fmt: ElementFormat) -> None:
    x = np.sort(values)[None, :]
    q = ue8m0.quantize(x, block=(1, -1), fmt=fmt, scale_rule=rule)
    y = ue8m0.dequantize(q)[0]
    assert np.all(np.diff(y) >= 0)


@settings(max_examples=60, deadline=None)
@given(x=tensors(), block=st.sampled_from(BLOCKS), rule=st.sampled_from([*POW2_RULES, "fp32"]))
def test_batched_leading_dims_equal_per_slice(
    x: np.ndarray, block: tuple[int, int], rule: str
) -> None:
    stacked = np.stack([x, -x, x * 3])
    q = ue8m0.quantize(stacked, block=block, scale_rule=rule)
    for i in range(3):
        qi = ue8m0.quantize(stacked[i], block=block, scale_rule=rule)
        assert np.array_equal(q.codes[i], qi.codes)
        assert np.array_equal(q.scale[i].view(np.uint32), qi.scale.view(np.uint32))
