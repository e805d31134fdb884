"""Bad input to the numerics API: each a clear ValueError/TypeError that names the problem."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ue8m0
from ue8m0.blocks import parse_block

X = np.ones((4, 64), np.float32)

CASES = [
    ("empty", dict(x=np.zeros((0, 128), np.float32)), ue8m0.InputError, "empty"),
    ("0-d", dict(x=np.float32(1.0)), ue8m0.InputTypeError, "numpy array"),
    ("0-d array", dict(x=np.array(1.0, np.float32)), ue8m0.InputError, "at least 2 dims"),
    ("1-d", dict(x=np.ones(128, np.float32)), ue8m0.InputError, r"reshape a vector to \(1, n\)"),
    ("int array", dict(x=np.ones((2, 2), np.int32)), ue8m0.InputTypeError, "int32"),
    ("bool array", dict(x=np.ones((2, 2), bool)), ue8m0.InputTypeError, "bool"),
    ("complex", dict(x=np.ones((2, 2), np.complex64)), ue8m0.InputTypeError, "complex64"),
    ("list", dict(x=[[1.0, 2.0]]), ue8m0.InputTypeError, "list"),
    ("block zero", dict(block=(0, 128)), ue8m0.BlockError, "positive"),
    ("block negative", dict(block=(128, -5)), ue8m0.BlockError, "positive"),
    ("block arity", dict(block=(1, 2, 3)), ue8m0.BlockError, "2 sizes"),
    ("block float", dict(block=(1.5, 2)), ue8m0.BlockError, "integers"),
    ("block bool", dict(block=(True, 2)), ue8m0.BlockError, "integers"),
    ("block name", dict(block="huge"), ue8m0.BlockError, "RxC"),
    ("fmt", dict(fmt="e3m5"), ue8m0.FormatNameError, "unknown element format 'e3m5'"),
    ("rule", dict(scale_rule="round"), ue8m0.FormatNameError, "unknown scale rule 'round'.*rceil"),
    ("nonfinite", dict(nonfinite="ignore"), ue8m0.FormatNameError, "unknown nonfinite policy"),
    ("eps negative", dict(eps=-1.0), ue8m0.InputError, "eps must be finite and >= 0"),
    ("eps nan", dict(eps=float("nan")), ue8m0.InputError, "eps"),
    ("backend", dict(backend="gpu"), ue8m0.FormatNameError, "unknown backend 'gpu'"),
]


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_quantize_input(name: str, kwargs: dict, error: type, message: str) -> None:
    args = {"x": X, **kwargs}
    with pytest.raises(error, match=message):
        ue8m0.quantize(args.pop("x"), **args)
    assert issubclass(error, (ValueError, TypeError))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises_by_default(value: float) -> None:
    x = np.ones((2, 256), ml_dtypes.bfloat16)
    x[1, 3] = value
    with pytest.raises(ue8m0.NonFiniteError, match=r"block \(1, 0\)"):
        ue8m0.quantize(x, block=(1, 128))


def test_dequantize_rejects_other_dtypes() -> None:
    q = ue8m0.quantize(X)
    with pytest.raises(ue8m0.FormatNameError, match="float32 or bfloat16"):
        ue8m0.dequantize(q, dtype=np.float16)


def test_block_spellings() -> None:
    assert parse_block("128x128") == (128, 128)
    assert parse_block("weight") == (128, 128)
    assert parse_block(32) == (1, 32)
    assert parse_block([1, -1]) == (1, -1)


def test_whole_dim_blocks() -> None:
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    per_row = ue8m0.quantize(x, block=(1, -1), eps=0)
    assert per_row.scale.shape == (3, 1)
    per_tensor = ue8m0.quantize(x, block=(-1, -1), eps=0)
    assert per_tensor.scale.shape == (1, 1)
    assert per_tensor.scale_codes is not None and per_tensor.scale_codes[0, 0] == 127 - 5  # 12/448


def test_float64_rounds_to_float32_and_input_is_not_modified() -> None:
    x = np.random.default_rng(1).standard_normal((8, 40))
    copy = x.copy()
    q64 = ue8m0.quantize(x, block=(1, 32))
    q32 = ue8m0.quantize(x.astype(np.float32), block=(1, 32))
    assert np.array_equal(q64.codes, q32.codes)
    assert np.array_equal(x, copy)
