"""``gemm(mode="hopper")`` against bits an NVIDIA H200 produced.

``tests/data/h200_fp8_gemm.npz`` was written by ``bench/hopper_gemm_probe.py compare --golden`` on
2026-11-29 (torch 2.11.0+cu130, cuBLAS from CUDA 13.0, Triton 3.6.0): for five operand sets
(Gaussian and uniformly random codes, e4m3, e5m2, e4m3 × e5m2; K = 4096) the first 4 rows of A
and B with their scales, and the 4×4 corner of each GPU call's float32 output — cuBLAS tensor-
wise with and without fast accumulation, cuBLAS block-scaled 1×128 × 128×128, and Triton
``tl.dot`` carried over K or promoted every 32/64/128 elements. (The probe compared all 128×256
outputs of every call: all equal.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ue8m0.api import QuantizedTensor
from ue8m0.errors import FormatNameError, InputError
from ue8m0.formats import decode_table, element_format
from ue8m0.gemm import _ZERO_EXPONENT, gemm
from ue8m0.policies import ScaleRule

DATA = np.load(Path(__file__).parent / "data" / "h200_fp8_gemm.npz")
CALLS = sorted(k[: -len(".c")] for k in DATA.files if k.endswith(".c"))


def _operands(call: str) -> tuple[QuantizedTensor, QuantizedTensor]:
    kind, how = call.split(".")
    fa, fb = (element_format(str(f)) for f in DATA[f"{kind}.fmt"])
    a = QuantizedTensor(
        DATA[f"{kind}.a"].view(fa.dtype), DATA[f"{kind}.sa"], None, fa, (1, 128), ScaleRule.RCEIL
    )
    b = QuantizedTensor(
        DATA[f"{kind}.b"].view(fb.dtype), DATA[f"{kind}.sb"], None, fb, (128, 128), ScaleRule.RCEIL
    )
    if how == "cublas_blockwise":
        return a, b
    # tensor-wise calls: unit scales over the whole of K
    ones = np.ones((a.shape[0], 1), np.float32)
    return (
        dataclasses.replace(a, scale=ones, block=(1, -1)),
        dataclasses.replace(b, scale=ones[:1], block=(-1, -1)),
    )


def _promote(call: str) -> int | None:
    return int(DATA[f"{call}.promote"]) or None


def test_the_recording_covers_every_kind_of_call() -> None:
    kinds = {c.split(".")[0] for c in CALLS}
    assert kinds == {"gauss", "wide", "gauss_e5m2", "wide_e5m2", "mixed"}
    hows = {c.split(".")[1] for c in CALLS}
    assert {"cublas_blockwise", "cublas_tensorwise_fast0", "cublas_tensorwise_fast1"} <= hows
    assert {_promote(c) for c in CALLS} == {None, 32, 64, 128}
    assert len(CALLS) == 33


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("call", CALLS)
def test_hopper_mode_equals_the_h200_bit_for_bit(call: str, backend: str) -> None:
    a, b = _operands(call)
    got = gemm(a, b, "hopper", promote_every=_promote(call), backend=backend)
    np.testing.assert_array_equal(got.view(np.uint32), DATA[f"{call}.c"].view(np.uint32))


def test_the_other_modes_do_not_reproduce_the_h200() -> None:
    """The recording discriminates: the exact, fp32 and limited models each miss outputs."""
    missed = {"exact": 0, "fp32": 0, "limited": 0}
    for call in CALLS:
        a, b = _operands(call)
        want = DATA[f"{call}.c"]
        p = _promote(call)
        models = {
            "exact": gemm(a, b, "exact").astype(np.float32),
            "limited": gemm(a, b, "limited", promote_every=p, mma_k=32),
        }
        if p is not None:
            models["fp32"] = gemm(a, b, "fp32")
        for mode, c in models.items():
            missed[mode] += int((c.view(np.uint32) != want.view(np.uint32)).sum())
    assert all(n > 0 for n in missed.values()), missed


def _one(a_vals: list[float], b_vals: list[float], k: int = 32) -> tuple[QuantizedTensor, ...]:
    fmt = element_format("e4m3")
    out = []
    for vals in (a_vals, b_vals):
        x = np.zeros((1, k), np.float32)
        x[0, : len(vals)] = vals
        data = x.astype(ml_dtypes.float8_e4m3fn)
        assert (data.astype(np.float32) == x).all()
        out.append(
            QuantizedTensor(data, np.ones((1, 1), np.float32), None, fmt, (1, -1), ScaleRule.FP32)
        )
    return tuple(out)


def test_hopper_alignment_drops_bits_below_the_largest_exponent_sum() -> None:
    # 256 * 1 has exponent sum 8; 2**-6 * 2**-1 = 2**-7 lies 15 bits below it: dropped entirely
    a, b = _one([256.0, 2.0**-6], [1.0, 0.5])
    assert gemm(a, b, "exact")[0, 0] == 256 + 2.0**-7
    assert gemm(a, b, "hopper", promote_every=None)[0, 0] == 256.0
    # 2**-5 lies 13 bits below: kept
    a, b = _one([256.0, 2.0**-5], [1.0, 1.0])
    assert gemm(a, b, "hopper", promote_every=None)[0, 0] == 256 + 2.0**-5


def test_hopper_aligns_to_the_exponent_sum_not_the_product() -> None:
    # 1.875 * 1.875 = 3.515625 has exponent sum 0 (its own exponent is 1); with -1.75 the sum
    # falls to 1.765625, so the final cut keeps 2**-13. 2**-6 * 2**-7 = 2**-13 lies 13 bits
    # below 0: kept. Aligned to the largest product's own exponent (1) it would lie 14 bits
    # below and be dropped.
    a, b = _one([1.875, -1.75, 2.0**-6], [1.875, 1.0, 2.0**-7])
    exact = 1.875 * 1.875 - 1.75 + 2.0**-13
    assert gemm(a, b, "exact")[0, 0] == exact
    assert gemm(a, b, "hopper", promote_every=None)[0, 0] == exact
    # the sum is cut to 13 fraction bits: in [2, 4) the grid is 2**-12, so 2**-13 goes
    a, b = _one([1.875, 2.0**-6], [1.875, 2.0**-7])
    assert gemm(a, b, "hopper", promote_every=None)[0, 0] == 1.875 * 1.875


def test_hopper_promotion_needs_one_scale_per_interval() -> None:
    rng = np.random.default_rng(0)
    fmt = element_format("e4m3")
    x = rng.standard_normal((2, 256)).astype(ml_dtypes.float8_e4m3fn)
    q = QuantizedTensor(x, np.ones((2, 2), np.float32), None, fmt, (1, 128), ScaleRule.FP32)
    with pytest.raises(InputError, match="one scale along K"):
        gemm(q, q, "hopper", promote_every=None)
    with pytest.raises(InputError, match="multiple of 32"):
        gemm(q, q, "hopper", promote_every=48)
    with pytest.raises(InputError, match="divides the K-block"):
        gemm(q, q, "hopper", promote_every=256)
    assert gemm(q, q, "hopper", promote_every=64).shape == (2, 2)
    for mode in ("hopper", "fp32", "exact"):  # a bad backend is an error whatever the mode
        with pytest.raises(FormatNameError, match="unknown backend"):
            gemm(q, q, mode, backend="gpu")


def _codes(rng: np.random.Generator, fmt_name: str, shape: tuple[int, int], kind: str) -> Any:
    fmt = element_format(fmt_name)
    values = decode_table(fmt)
    finite = np.flatnonzero(np.isfinite(values)).astype(np.uint8)
    if kind == "wide":
        codes = rng.choice(finite, shape)
    elif kind == "sparse":  # mostly zeros: all-zero steps, zero accumulators
        codes = np.where(rng.random(shape) < 0.9, 0, rng.choice(finite, shape)).astype(np.uint8)
    else:  # small: subnormals and the lowest normals only
        small = finite[np.abs(values[finite]) < 4 * fmt.smallest_normal]
        codes = rng.choice(small, shape)
    return codes.view(fmt.dtype), fmt


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    k=st.integers(1, 300),
    fmts=st.sampled_from([("e4m3", "e4m3"), ("e5m2", "e5m2"), ("e4m3", "e5m2")]),
    kind=st.sampled_from(["wide", "sparse", "small"]),
    layout=st.sampled_from(["blocks", "mx", "tensor"]),
    pow2=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_compiled_kernel_equals_the_numpy_oracle(
    m: int, n: int, k: int, fmts: tuple[str, str], kind: str, layout: str, pow2: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    (ca, fa), (cb, fb) = (_codes(rng, f, (r, k), kind) for f, r in zip(fmts, (m, n), strict=True))
    block_a, block_b = {
        "blocks": ((1, 128), (128, 128)),
        "mx": ((1, 32), (1, 32)),
        "tensor": ((1, -1), (-1, -1)),
    }[layout]
    kb = {"blocks": 128, "mx": 32, "tensor": k}[layout]
    rows_b = n if layout == "mx" else -(-n // 128)

    def scales(rows: int) -> np.ndarray:
        shape = (rows, -(-k // kb))
        if pow2:  # UE8M0
            return np.ldexp(1.0, rng.integers(-8, 9, shape)).astype(np.float32)
        return rng.uniform(1e-3, 10.0, shape).astype(np.float32)  # the order of roundings shows

    sa, sb = scales(m), scales(rows_b)
    a = QuantizedTensor(ca, sa, None, fa, block_a, ScaleRule.RCEIL)
    b = QuantizedTensor(cb, sb, None, fb, block_b, ScaleRule.RCEIL)
    for promote in {"blocks": (32, 128), "mx": (32,), "tensor": (None, 64)}[layout]:
        fast = gemm(a, b, "hopper", promote_every=promote, backend="fast")
        ref = gemm(a, b, "hopper", promote_every=promote, backend="reference")
        np.testing.assert_array_equal(fast.view(np.uint32), ref.view(np.uint32))


def test_non_finite_inputs_go_to_the_oracle_and_propagate() -> None:
    a, b = _one([1.0, 2.0], [1.0, 1.0])
    a.data[0, 1] = np.nan
    c = gemm(a, b, "hopper", promote_every=None)
    assert np.isnan(c[0, 0])
    np.testing.assert_array_equal(c, gemm(a, b, "hopper", promote_every=None, backend="reference"))


def test_the_kernel_and_the_oracle_give_zeros_the_same_exponent() -> None:
    from ue8m0.kernels import _gemm

    assert _ZERO_EXPONENT == _gemm.ZERO_EXPONENT
