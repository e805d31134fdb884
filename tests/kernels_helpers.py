"""Shared helpers of the kernel tests: run fast and oracle side by side, compare bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ue8m0 import kernels, reference
from ue8m0.formats import ElementFormat
from ue8m0.policies import NonFinite, ScaleRule


def oracle_quantize(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    rule: ScaleRule,
    eps: float = 0.0,
    policy: NonFinite = NonFinite.PROPAGATE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with np.errstate(all="ignore"):  # the oracle divides by zero scales on purpose
        return reference.quantize(x, block, fmt, rule, eps, policy)


def assert_same_quantize(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    rule: ScaleRule,
    eps: float = 0.0,
    policy: NonFinite = NonFinite.PROPAGATE,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize with both backends and assert identical codes, scale bits and scale bytes."""
    want = oracle_quantize(x, block, fmt, rule, eps, policy)
    got = kernels.quantize(x, block, fmt, rule, eps, policy, threads)
    where = f"{fmt.name} {rule.value} block={block} eps={eps} shape={x.shape} dtype={x.dtype}"
    assert got[0].shape == want[0].shape and got[0].dtype == np.uint8, where
    mismatch = np.flatnonzero(got[0] != want[0])
    if mismatch.size:
        i = mismatch[0]
        raise AssertionError(
            f"{where}: {mismatch.size} codes differ, first at flat {i}: "
            f"input bits {x.reshape(-1)[i : i + 1].view(_uint(x)).item():#x}, "
            f"fast {got[0].reshape(-1)[i]:#04x}, oracle {want[0].reshape(-1)[i]:#04x}"
        )
    assert got[1].dtype == np.float32 and got[1].shape == want[1].shape, where
    np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32), err_msg=where)
    if want[2] is None:
        assert got[2] is None, where
    else:
        assert got[2] is not None, where
        np.testing.assert_array_equal(got[2], want[2], err_msg=where)
    return got


def assert_same_dequantize(
    codes: np.ndarray,
    scale: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    dtype: Any,
    threads: int | None = None,
) -> None:
    """Dequantize with both backends and assert identical output bytes."""
    with np.errstate(all="ignore"):
        want = reference.dequantize(codes, scale, block, fmt, dtype)
    got = kernels.dequantize(codes, scale, block, fmt, dtype, threads)
    assert got.dtype == want.dtype and got.shape == want.shape
    where = f"{fmt.name} block={block} -> {np.dtype(dtype)}"
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=where)


def _uint(x: np.ndarray) -> type:
    return np.uint32 if x.dtype.itemsize == 4 else np.uint16
