"""Block-scaled GEMM emulation: exact vs fp32 vs the limited accumulator model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ue8m0
from ue8m0 import dequantize, quantize
from ue8m0.errors import FormatNameError, InputError, InputTypeError
from ue8m0.gemm import gemm

RNG = np.random.default_rng(80)


def _pair(m: int, n: int, k: int, a_block=(1, 128), b_block=(128, 128), rule="rceil", fmt="e4m3"):
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((n, k)).astype(np.float32)
    return quantize(a, a_block, fmt, rule), quantize(b, b_block, fmt, rule)


def _rel(c: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(c.astype(np.float64) - ref) / np.linalg.norm(ref))


def test_exact_is_float64_product_of_dequantized() -> None:
    qa, qb = _pair(37, 130, 300)
    c = gemm(qa, qb, "exact")
    assert c.dtype == np.float64 and c.shape == (37, 130)
    want = dequantize(qa).astype(np.float64) @ dequantize(qb).astype(np.float64).T
    np.testing.assert_array_equal(c, want)


@pytest.mark.parametrize(
    ("a_block", "b_block", "fmt"),
    [((1, 128), (128, 128), "e4m3"), ((1, 32), (1, 32), "e4m3"), ((1, 128), (128, 128), "e5m2")],
)
def test_fp32_differs_from_exact_by_float32_rounding_only(a_block, b_block, fmt) -> None:
    k = 520
    qa, qb = _pair(40, 50, k, a_block, b_block, fmt=fmt)
    exact = gemm(qa, qb, "exact")
    c = gemm(qa, qb, "fp32")
    assert c.dtype == np.float32
    # each K-block adds <= 3 roundings of at most half an ulp of float32 of a partial sum
    kblocks = -(-k // min(a_block[1], b_block[1]))
    da, db = dequantize(qa).astype(np.float64), dequantize(qb).astype(np.float64)
    bound = 3 * kblocks * 2.0**-24 * (np.abs(da) @ np.abs(db).T)
    assert np.all(np.abs(c - exact) <= bound)


def test_fp32_matches_a_scalar_loop() -> None:
    qa, qb = _pair(3, 4, 260)
    av, bv = qa.data.astype(np.float64), qb.data.astype(np.float64)
    c = gemm(qa, qb, "fp32")
    for i in range(3):
        for j in range(4):
            acc = np.float32(0)
            for kb in range(3):
                sl = slice(128 * kb, 128 * kb + 128)
                part = np.float32(np.dot(av[i, sl], bv[j, sl]))  # exact, rounded once
                acc = np.float32(acc + np.float32(qa.scale[i, kb] * qb.scale[j // 128, kb]) * part)
            assert c[i, j] == acc


@pytest.mark.parametrize("bits", [23, 30])
def test_limited_with_promotion_every_kblock_equals_fp32(bits: int) -> None:
    qa, qb = _pair(33, 140, 700)
    want = gemm(qa, qb, "fp32")
    got = gemm(qa, qb, "limited", mantissa_bits=bits, promote_every=128)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gemm(qa, qb, "limited", mantissa_bits=bits, rounding="rne"), want)


def test_limited_mx_blocks_equal_fp32_at_full_precision() -> None:
    qa, qb = _pair(8, 9, 100, (1, 32), (1, 32))
    np.testing.assert_array_equal(
        gemm(qa, qb, "limited", mantissa_bits=23, promote_every=32), gemm(qa, qb, "fp32")
    )


def test_limited_error_grows_without_promotion_and_stays_flat_with_it() -> None:
    errors: dict[str, list[float]] = {"none": [], "promoted": [], "fp32": []}
    for k in (512, 2048, 8192):
        a = np.abs(RNG.standard_normal((16, k))).astype(np.float32)  # positive: no cancellation
        b = np.abs(RNG.standard_normal((16, k))).astype(np.float32)
        qa, qb = quantize(a, (1, 128)), quantize(b)
        exact = gemm(qa, qb, "exact")
        errors["none"].append(_rel(gemm(qa, qb, "limited", promote_every=None), exact))
        errors["promoted"].append(_rel(gemm(qa, qb, "limited"), exact))
        errors["fp32"].append(_rel(gemm(qa, qb, "fp32"), exact))
    none, promoted, fp32 = errors["none"], errors["promoted"], errors["fp32"]
    assert none[0] < none[1] < none[2]  # grows with K
    assert max(promoted) < 2 * min(promoted)  # flat
    assert all(p < n for p, n in zip(promoted, none, strict=True))
    assert none[2] > 8 * promoted[2]
    assert all(f < p for f, p in zip(fp32, promoted, strict=True))


def test_limited_truncation_and_rne_are_bit_models() -> None:
    # one output element, K = 256 in two groups, accumulator with 2 fraction bits
    a = np.zeros((1, 256), np.float32)
    b = np.zeros((1, 256), np.float32)
    a[0, 0], b[0, 0] = 1.0, 1.0  # group 1 sums to 1
    a[0, 128], b[0, 128] = 0.875, 1.0  # group 2 adds 0.875 -> 1.875 = 1.111b
    qa, qb = quantize(a, (1, 128), scale_rule="fp32"), quantize(b, (1, 128), scale_rule="fp32")
    assert gemm(qa, qb, "exact")[0, 0] == 1.875
    kw = {"mantissa_bits": 2, "promote_every": None}
    assert gemm(qa, qb, "limited", **kw)[0, 0] == 1.75  # truncated to 1.11b
    assert gemm(qa, qb, "limited", rounding="rne", **kw)[0, 0] == 2.0  # tie 1.111b -> 10.0b
    assert gemm(qa, qb, "limited", mantissa_bits=2)[0, 0] == 1.875  # promoted per 128: exact


def test_finer_mma_k_never_loses_less_on_positive_data() -> None:
    a = np.abs(RNG.standard_normal((8, 2048))).astype(np.float32)
    qa, qb = quantize(a, (1, 128)), quantize(a)
    exact = gemm(qa, qb, "exact")
    coarse = _rel(gemm(qa, qb, "limited", promote_every=None), exact)
    fine = _rel(gemm(qa, qb, "limited", promote_every=None, mma_k=32), exact)
    assert fine > coarse


def test_errors() -> None:
    qa, qb = _pair(4, 4, 256)
    with pytest.raises(InputError, match="K differs"):
        gemm(qa, quantize(np.ones((4, 128), np.float32)))
    with pytest.raises(InputTypeError):
        gemm(np.ones((4, 256)), qb)  # type: ignore[arg-type]
    with pytest.raises(FormatNameError, match="mode"):
        gemm(qa, qb, "bf16")
    with pytest.raises(FormatNameError, match="rounding"):
        gemm(qa, qb, "limited", rounding="up")
    with pytest.raises(InputError, match="multiple"):
        gemm(qa, qb, "limited", promote_every=80, mma_k=32)
    with pytest.raises(InputError, match="divide"):
        gemm(qa, qb, "limited", mma_k=48)
    with pytest.raises(InputError, match="mantissa_bits"):
        gemm(qa, qb, "limited", mantissa_bits=0)
    with pytest.raises(InputError, match="2-D"):
        gemm(quantize(np.ones((2, 4, 256), np.float32)), qb)


def test_reachable_from_package_without_torch() -> None:
    assert ue8m0.gemm is gemm
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import ue8m0, ue8m0.gemm, ue8m0.layouts\n"
        "assert callable(ue8m0.gemm) and callable(ue8m0.layouts.pack_ue8m0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
