"""What each step compiles before the workers start: one warm-up per kernel-running action, each
calling the kernels its step calls with the step's dtypes and blocks on tiny zero inputs (under
:func:`ue8m0.kernels.compile_only` the runner's caller makes them compile, not run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.api import QuantizedTensor, dequantize, quantize
from ue8m0.checkpoint.options import DequantizeOptions, Fp8Options, Options, QuantizeOptions
from ue8m0.checkpoint.plan import Task
from ue8m0.checkpoint.registry import FP4, MX_BLOCK, element_fmt
from ue8m0.deepseek_v4 import AMAX_FLOOR
from ue8m0.formats import FLOAT4_E2M1FN

#: (source dtype, task, options) -> None
WarmUp = Callable[[Any, Task, Options], None]


def _block(task: Task) -> tuple[int, int]:
    br, bc = tuple(task.block) if task.block else (1, 1)
    return br, bc


def _zeros(dtype: Any, task: Task) -> np.ndarray:
    """Two blocks by two of the task's block, read-only like the reader's ``map_rows`` slabs."""
    br, bc = _block(task)
    x = np.zeros((2 * br, 2 * bc), dtype)
    x.flags.writeable = False
    return x


def _out_dtype(options: Options) -> Any:
    as_bf16 = isinstance(options, DequantizeOptions) and options.dtype == "bf16"
    return ml_dtypes.bfloat16 if as_bf16 else np.float32


def _warm_quantize(dtype: Any, task: Task, options: Options) -> None:
    """The plain rule (the MSE search runs in numpy)."""
    assert isinstance(options, QuantizeOptions)
    x, el = _zeros(dtype, task), element_fmt(options.fmt)
    quantize(x, _block(task), el, options.scale_rule, options.eps, options.nonfinite)


def _warm_dequantize(dtype: Any, task: Task, options: Options) -> None:
    """FP8 codes (read-only slabs) or FP4 codes (unpacked, writable) and their scales."""
    scales = np.ones((2, 2), np.float32)
    if task.fmt == FP4:
        codes = np.zeros((2, 2 * _block(task)[1]), np.uint8).view(FLOAT4_E2M1FN.dtype)
        q = QuantizedTensor.from_stored(codes, scales, FLOAT4_E2M1FN, MX_BLOCK)
    else:
        el = element_fmt(str(task.fmt))
        q = QuantizedTensor.from_stored(_zeros(dtype, task), scales, el, _block(task))
    dequantize(q, _out_dtype(options))


def _warm_fp8(dtype: Any, task: Task, options: Options) -> None:
    """requantize / relayout: the source dequantized in float32, requantized to the output
    block."""
    assert isinstance(options, Fp8Options)
    _warm_dequantize(dtype, task, options)
    el = element_fmt(str(task.fmt))
    out_block = options.out_block(_block(task))
    x32 = np.zeros((2 * out_block[0], 2 * out_block[1]), np.float32)
    q32 = quantize(x32, out_block, el, options.scale_rule, options.eps, options.nonfinite)
    dequantize(q32, np.float32)


def _warm_quantize_fp4(dtype: Any, task: Task, options: Options) -> None:
    """``quantize_fp4_v4``'s kernel call (its packing is numpy)."""
    quantize(_zeros(dtype, task), MX_BLOCK, FLOAT4_E2M1FN, "rceil", AMAX_FLOOR)


#: task action -> its warm-up (the actions that run compiled kernels)
WARM_UPS: dict[str, WarmUp] = {
    "quantize": _warm_quantize,
    "dequantize": _warm_dequantize,
    "requantize": _warm_fp8,
    "relayout": _warm_fp8,
    "quantize_fp4": _warm_quantize_fp4,
}
