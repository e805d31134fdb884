"""Every bf16 and fp16 bit pattern through the fast kernels, byte-compared with the oracle."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from kernels_helpers import assert_same_dequantize, assert_same_quantize
from ue8m0.formats import ELEMENT_FORMATS, UE8M0, ElementFormat, decode_table
from ue8m0.policies import ScaleRule

FORMATS = pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=lambda f: f.name)
RULES = pytest.mark.parametrize("rule", list(ScaleRule), ids=lambda r: r.value)
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
INPUTS = pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "fp16"])


@FORMATS
@RULES
@INPUTS
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_every_pattern_as_its_own_block(
    fmt: ElementFormat, rule: ScaleRule, dtype: type, eps: float
) -> None:
    """(65536, 1) with block (1, 1): each pattern is the amax of its block (the scale rules)."""
    x: np.ndarray = ALL_BITS.view(dtype).reshape(-1, 1)
    assert_same_quantize(x, (1, 1), fmt, rule, eps)


@FORMATS
@RULES
@INPUTS
@pytest.mark.parametrize("block", [(1, 128), (4, 32), (1, 32)])
def test_every_pattern_in_full_blocks(
    fmt: ElementFormat, rule: ScaleRule, dtype: type, block: tuple[int, int]
) -> None:
    """(512, 128): neighbouring patterns share a scale (the element rounding at every scale)."""
    x: np.ndarray = ALL_BITS.view(dtype).reshape(512, 128)
    assert_same_quantize(x, block, fmt, rule, 1e-4)


@FORMATS
@RULES
@INPUTS
def test_every_pattern_under_fixed_scales(fmt: ElementFormat, rule: ScaleRule, dtype: type) -> None:
    """Each row of patterns also holds a large value, so small patterns meet coarse scales."""
    x = ALL_BITS.view(dtype).reshape(1024, 64).astype(np.float32)
    x = np.where(np.isfinite(x), x, np.float32(0))
    top = 16 if dtype is np.float16 else 24
    anchors = np.float32(2.0) ** np.arange(-40, top, dtype=np.float32)
    x = np.concatenate([x, np.resize(anchors, (1024, 1))], axis=1).astype(dtype)
    assert_same_quantize(x, (1, 65), fmt, rule, 0.0)


@FORMATS
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_dequantize_every_code_at_every_scale_byte(fmt: ElementFormat, dtype: type) -> None:
    """All codes × all 256 UE8M0 bytes (2**-127 subnormal ... 2**127, NaN): overflow, rounding."""
    n = 1 << fmt.bits
    codes = np.tile(np.arange(n, dtype=np.uint8), (256, 1))
    exponents = np.arange(255) - UE8M0.bias
    scale = np.append(np.ldexp(np.float32(1), exponents), np.nan).astype(np.float32)[:, None]
    assert_same_dequantize(codes, scale, (1, n), fmt, dtype)


@FORMATS
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_dequantize_fp32_scales(fmt: ElementFormat, dtype: type) -> None:
    """Arbitrary float32 scales (rounding in the product), zero, subnormal, Inf, NaN."""
    rng = np.random.default_rng(3)
    n = 1 << fmt.bits
    special = np.array([0, -0.0, 1e-45, 3e-39, np.inf, np.nan, 3.4e38, 1 / 3], np.float32)
    randoms = (rng.standard_normal(56) * 10.0 ** rng.integers(-40, 38, 56)).astype(np.float32)
    scale = np.concatenate([special, randoms]).astype(np.float32)[:, None]
    codes = np.tile(np.arange(n, dtype=np.uint8), (scale.shape[0], 1))
    assert_same_dequantize(codes, scale, (1, n), fmt, dtype)
    assert decode_table(fmt).shape == (n,)


@FORMATS
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_dequantize_negative_power_of_two_scales(fmt: ElementFormat, dtype: type) -> None:
    """All codes × -2**e for every float32 exponent (the exact-product path sees the sign)."""
    n = 1 << fmt.bits
    exponents = np.arange(-149, 128)
    scale = (-np.ldexp(np.float32(1), exponents)).astype(np.float32)[:, None]
    codes = np.tile(np.arange(n, dtype=np.uint8), (scale.shape[0], 1))
    assert_same_dequantize(codes, scale, (1, n), fmt, dtype)
