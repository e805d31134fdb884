"""``out=`` of ``ue8m0.quantize`` / ``ue8m0.dequantize``: same bytes as allocating, checked."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import ue8m0
from ue8m0.errors import InputError

BACKENDS = ("fast", "reference")
CASES = [
    ((256, 384), (128, 128), "e4m3", "rceil", 1e-4, None),
    ((3, 64, 96), (1, 32), "e4m3", "floor", 0.0, None),
    ((130, 70), (32, 32), "e5m2", "even", 0.0, None),
    ((64, 64), (1, 32), "float4_e2m1fn", "rceil", 0.0, None),
    ((64, 128), (32, 32), "e4m3", "fp32", 1e-4, None),
    ((64, 128), (32, 32), "e4m3", "rceil", 0.0, "mse"),
]


def _x(shape: tuple[int, ...], dtype: Any = ml_dtypes.bfloat16) -> np.ndarray:
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "block", "fmt", "rule", "eps", "search"), CASES)
@pytest.mark.parametrize("uint8", [True, False])
def test_quantize_out_matches_allocating(
    backend: str,
    shape: tuple[int, ...],
    block: tuple[int, int],
    fmt: str,
    rule: str,
    eps: float,
    search: str | None,
    uint8: bool,
) -> None:
    x = _x(shape)
    want = ue8m0.quantize(x, block, fmt, rule, eps, scale_search=search, backend=backend)
    dtype = np.uint8 if uint8 else want.data.dtype
    buf = np.full(shape, 0xA5, dtype=np.uint8).view(dtype)
    got = ue8m0.quantize(x, block, fmt, rule, eps, scale_search=search, out=buf, backend=backend)
    assert np.shares_memory(got.data, buf)
    assert got.data.dtype == want.data.dtype
    assert got.codes.tobytes() == want.codes.tobytes()
    assert got.scale.tobytes() == want.scale.tobytes()
    if want.scale_codes is None:
        assert got.scale_codes is None
    else:
        assert got.scale_codes is not None
        assert got.scale_codes.tobytes() == want.scale_codes.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize(("shape", "block", "fmt", "rule", "eps", "search"), CASES)
def test_dequantize_out_matches_allocating(
    backend: str,
    dtype: Any,
    shape: tuple[int, ...],
    block: tuple[int, int],
    fmt: str,
    rule: str,
    eps: float,
    search: str | None,
) -> None:
    q = ue8m0.quantize(_x(shape), block, fmt, rule, eps, scale_search=search)
    want = ue8m0.dequantize(q, dtype, backend=backend)
    buf = np.full(shape, np.nan, dtype=dtype)
    got = ue8m0.dequantize(q, dtype, out=buf, backend=backend)
    assert got is buf
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_buffer_reuse_across_calls() -> None:
    """One buffer for several tensors (the streaming-conversion use)."""
    codes = np.empty((128, 256), np.uint8)
    deq = np.empty((128, 256), ml_dtypes.bfloat16)
    for seed in range(3):
        x = (np.random.default_rng(seed).standard_normal((128, 256)) * 10**seed).astype(np.float32)
        q = ue8m0.quantize(x, (1, 32), out=codes)
        want = ue8m0.quantize(x, (1, 32))
        assert q.codes.tobytes() == want.codes.tobytes()
        assert ue8m0.dequantize(q, ml_dtypes.bfloat16, out=deq).tobytes() == (
            ue8m0.dequantize(want, ml_dtypes.bfloat16).tobytes()
        )


def test_nonfinite_propagate_with_out() -> None:
    x = _x((64, 64), np.float32)
    x[3, 5] = np.nan
    for backend in BACKENDS:
        want = ue8m0.quantize(x, (32, 32), nonfinite="propagate", backend=backend)
        buf = np.zeros((64, 64), np.uint8)
        got = ue8m0.quantize(x, (32, 32), nonfinite="propagate", out=buf, backend=backend)
        assert got.codes.tobytes() == want.codes.tobytes()
        assert got.scale.tobytes() == want.scale.tobytes()


def _bad_quantize_outs(x: np.ndarray) -> list[tuple[object, str]]:
    wide = np.empty((64, 256), np.uint8)
    return [
        (np.empty((64, 129), np.uint8), "shape"),
        (np.empty((64, 128), np.int8), "dtype"),
        (np.empty((64, 128), ml_dtypes.float8_e5m2), "dtype"),
        (np.empty((64, 128), np.float32), "dtype"),
        (wide[:, ::2], "C-contiguous"),
        (np.asfortranarray(np.empty((64, 128), np.uint8)), "C-contiguous"),
        (np.empty((64, 128), np.uint8).tolist(), "numpy array"),
        (x.view(np.uint8).reshape(-1)[: 64 * 128].reshape(64, 128), "overlaps"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantize_bad_out(backend: str) -> None:
    x = _x((64, 128))
    for out, words in _bad_quantize_outs(x):
        with pytest.raises(InputError, match=words):
            ue8m0.quantize(x, (1, 32), out=out, backend=backend)  # type: ignore[arg-type]
    frozen = np.empty((64, 128), np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(InputError, match="read-only"):
        ue8m0.quantize(x, (1, 32), out=frozen, backend=backend)


def test_quantize_out_aliasing_input_refused() -> None:
    """A uint8 input-sized buffer that *is* the input's memory (float8 codes in place)."""
    x = np.zeros((64, 128), np.float32)
    alias = x.view(np.uint8).reshape(-1)[64 * 128 : 2 * 64 * 128].reshape(64, 128)
    with pytest.raises(InputError, match="overlaps"):
        ue8m0.quantize(x, (1, 32), out=alias)
    blob = np.zeros(64 * 128 * 3, np.uint8)
    inp = blob[: 64 * 128 * 2].view(ml_dtypes.bfloat16).reshape(64, 128)
    with pytest.raises(InputError, match="overlaps"):
        ue8m0.quantize(inp, (1, 32), out=blob[64 * 128 : 2 * 64 * 128].reshape(64, 128))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dequantize_bad_out(backend: str) -> None:
    q = ue8m0.quantize(_x((64, 128)), (1, 32))
    bad: list[tuple[object, str]] = [
        (np.empty((64, 127), np.float32), "shape"),
        (np.empty((64, 128), ml_dtypes.bfloat16), "dtype"),  # dtype defaults to float32
        (np.empty((64, 128), np.float64), "dtype"),
        (np.empty((64, 256), np.float32)[:, ::2], "C-contiguous"),
        ([[0.0] * 128] * 64, "numpy array"),
    ]
    for out, words in bad:
        with pytest.raises(InputError, match=words):
            ue8m0.dequantize(q, out=out, backend=backend)  # type: ignore[arg-type]
    # out over the codes' own memory
    codes = np.zeros((64, 128 * 2), np.uint8)
    q2 = ue8m0.QuantizedTensor(
        codes[:, :128].view(ml_dtypes.float8_e4m3fn),
        q.scale,
        q.scale_codes,
        q.fmt,
        q.block,
        q.scale_rule,
    )
    with pytest.raises(InputError, match="overlaps"):
        ue8m0.dequantize(
            q2, ml_dtypes.bfloat16, out=codes.view(ml_dtypes.bfloat16), backend=backend
        )
