"""Metrics against hand-computed values, and the headroom each scale rule leaves."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ue8m0
from ue8m0 import metrics


def test_error_metrics_hand_computed() -> None:
    ref = np.array([[3.0, 4.0]])
    approx = np.array([[3.0, 3.0]])
    assert metrics.sqnr_db(ref, approx) == pytest.approx(10 * math.log10(25.0))
    assert metrics.rel_frobenius(ref, approx) == pytest.approx(0.2)
    assert metrics.cosine(ref, approx) == pytest.approx(21.0 / (5.0 * math.sqrt(18.0)))
    assert metrics.max_abs_error(ref, approx) == 1.0
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.fraction_flushed(
        [[1.0, 0.0, 2.0, 3.0]], [[0.0, 0.0, 2.0, 0.0]]
    ) == pytest.approx(2 / 3)


def test_rankdata_and_spearman() -> None:
    assert metrics.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_rowwise_cosine() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0]])
    assert metrics.rowwise_cosine(a, b) == pytest.approx([1 / math.sqrt(2), 1.0])


def test_block_reduce_pads_partial_blocks() -> None:
    x = np.arange(1, 16, dtype=np.float64).reshape(3, 5)
    sums = metrics.block_reduce(x, (2, 2))
    assert sums.shape == (2, 3)
    assert sums[0, 0] == 1 + 2 + 6 + 7
    assert sums[1, 2] == 15  # the lone corner element
    assert metrics.block_amax(-x, (2, -1)).ravel().tolist() == [10.0, 15.0]


def test_headroom_of_one_block_by_hand() -> None:
    q = ue8m0.quantize(np.ones((1, 128), np.float32), block=(1, 128), scale_rule="rceil")
    # scale 2**-8: 448 * 2**-8 / 1 = 1.75
    assert metrics.headroom_bits(np.ones((1, 128)), q)[0, 0] == pytest.approx(math.log2(1.75))


def _wide_range(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    octaves = rng.uniform(-12, 12, size=(4, 6, 1, 1))
    blocks = rng.standard_normal((4, 6, 32, 32)) * 2.0**octaves
    return blocks.transpose(0, 2, 1, 3).reshape(128, 192).astype(np.float32)


def test_rceil_headroom_is_below_one_bit_and_fp32_is_zero() -> None:
    x = _wide_range(0)
    rceil = metrics.headroom_bits(x, ue8m0.quantize(x, (32, 32), scale_rule="rceil", eps=0))
    fp32 = metrics.headroom_bits(x, ue8m0.quantize(x, (32, 32), scale_rule="fp32", eps=0))
    assert rceil.shape == (4, 6)
    assert np.all(rceil >= 0) and np.all(rceil < 1)
    assert rceil.max() - rceil.min() > 0.5  # it really varies with the amax
    np.testing.assert_allclose(fp32, 0.0, atol=1e-6)


def test_floor_saturates_where_rceil_does_not() -> None:
    x = np.array([[500.0, 1.0, -3.0, 460.0]], np.float32)
    floor = ue8m0.quantize(x, (1, 4), scale_rule="floor")
    rceil = ue8m0.quantize(x, (1, 4), scale_rule="rceil")
    assert metrics.headroom_bits(x, floor)[0, 0] == pytest.approx(math.log2(448 / 500))
    assert metrics.headroom_bits(x, rceil)[0, 0] == pytest.approx(math.log2(896 / 500))
    # 500 is clipped to 448; 460 is within half an ulp (16) of 448 and merely rounds to it
    assert metrics.fraction_saturated(x, floor) == 0.25
    assert metrics.fraction_saturated(x, rceil) == 0.0
    assert metrics.saturation_limit(ue8m0.FLOAT8_E4M3FN) == 464.0


def test_fp32_scales_never_count_as_saturating() -> None:
    x = _wide_range(3)
    q = ue8m0.quantize(x, (32, 32), scale_rule="fp32", eps=0)
    assert metrics.fraction_saturated(x, q) == 0.0


def test_flushed_to_zero_in_a_block_with_a_large_element() -> None:
    x = np.array([[448.0, 2.0**-11, 1.0, 0.0]], np.float32)
    q = ue8m0.quantize(x, (1, 4), scale_rule="rceil")
    y = ue8m0.dequantize(q)
    assert y[0, 1] == 0.0 and y[0, 2] == 1.0
    assert metrics.tensor_metrics(x, q, y)["flushed"] == pytest.approx(1 / 3)


def test_streamed_chunks_equal_one_piece() -> None:
    x = _wide_range(1)
    q = ue8m0.quantize(x, (32, 32))
    y = ue8m0.dequantize(q)
    whole = metrics.tensor_metrics(x, q, y)
    stats = metrics.ErrorStats()
    mask = metrics.saturated_mask(x, q)
    for lo in range(0, 128, 32):
        stats.update(x[lo : lo + 32], y[lo : lo + 32], mask[lo : lo + 32])
    assert stats.result() == pytest.approx(whole)
    assert whole["sqnr_db"] == pytest.approx(metrics.sqnr_db(x, y))
    assert whole["cosine"] == pytest.approx(metrics.cosine(x, y))


def test_worst_row_reveals_an_outlier_that_tensor_sqnr_hides() -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((128, 256)) * 0.02).astype(np.float32)
    clean = metrics.tensor_metrics(x, q := ue8m0.quantize(x), ue8m0.dequantize(q))
    x[5, 7] = 0.02 * 2.0**16
    bad = metrics.tensor_metrics(x, q := ue8m0.quantize(x), ue8m0.dequantize(q))
    assert bad["sqnr_db"] > clean["sqnr_db"]  # the outlier's energy dominates both sums
    assert bad["worst_row_sqnr_db"] < clean["worst_row_sqnr_db"] - 6
    assert bad["flushed"] > clean["flushed"]
