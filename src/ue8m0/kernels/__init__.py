"""Compiled (numba) CPU kernels behind ``ue8m0.quantize`` / ``ue8m0.dequantize``.

Bit-identical to :mod:`ue8m0.reference` (tests compare them exhaustively). Inputs are read
through integer views (numba does not know ml_dtypes), blocks are processed in parallel, and a
call allocates only its outputs: no float32 copy, no padded copy. Kernels are cached on disk
(``cache=True``), so a fresh process loads them instead of compiling.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numba
import numpy as np

from ue8m0.blocks import resolve_block, scale_grid
from ue8m0.errors import NonFiniteError
from ue8m0.formats import ElementFormat, Specials
from ue8m0.kernels._bits import decode_params, element_params
from ue8m0.kernels._cache import invalidate_stale_cache
from ue8m0.kernels._dequant import dequantize_kernel
from ue8m0.kernels._gemm import hopper_gemm_kernel
from ue8m0.kernels._mse import refine_mse_fast, refine_mse_kernel
from ue8m0.kernels._quant import quantize_groups_kernel, quantize_kernel
from ue8m0.kernels._threads import (
    ENV_VAR,
    fork_safe,
    prefer_fork_safe_layer,
    resolve_threads,
    using_threads,
)
from ue8m0.policies import NonFinite, ScaleRule

__all__ = [
    "ENV_VAR",
    "compile_only",
    "dequantize",
    "fork_safe",
    "hopper_gemm",
    "prefer_fork_safe_layer",
    "quantize",
    "refine_mse",
    "resolve_threads",
    "set_compile_lock",
    "using_threads",
]

invalidate_stale_cache(
    [
        dequantize_kernel,
        hopper_gemm_kernel,
        quantize_groups_kernel,
        quantize_kernel,
        refine_mse_kernel,
    ]
)

_VIEWS = {
    np.dtype(ml_dtypes.bfloat16): np.uint16,
    np.dtype(np.float16): np.int16,  # a distinct integer type selects the float16 widening
    np.dtype(np.float32): np.uint32,
}
#: work items per thread the block rows are cut into (for load balance)
_TASKS_PER_THREAD = 8
#: input bytes of one quantize task (both passes read it; the second from L2); 192 KB (six
#: 128x128 bf16 blocks) measured best, 3 % ahead of 128 KB, between 32 KB and 4 MB
_TASK_BYTES = 192 * 1024
#: code bytes of one dequantize task (one pass); 256 KB measured 6 % ahead of 512 KB once the
#: next task's prefetch went to L2
_DEQUANT_TASK_BYTES = 256 * 1024


class _State:
    """Process-wide launch state: see :func:`compile_only` and :func:`set_compile_lock`."""

    compile_only = False
    lock: Any = None


@contextlib.contextmanager
def compile_only() -> Iterator[None]:
    """Within it, kernel calls compile (or load from the disk cache) for their argument types
    and return without running: outputs are left unwritten. Workers forked afterwards start
    with them compiled (see :func:`fork_safe`)."""
    previous = _State.compile_only
    _State.compile_only = True
    try:
        yield
    finally:
        _State.compile_only = previous


def set_compile_lock(lock: Any) -> None:
    """Serialise compiling (and writing numba's disk cache) across processes with ``lock``:
    worker processes compiling the same kernel at once corrupt the cache."""
    _State.lock = lock


def _launch(kernel: Any, *args: Any) -> Any:
    """``kernel(*args)``; under :func:`compile_only` or a compile lock, first compile for the
    arguments' types (typing them costs tens of microseconds: plain calls skip it)."""
    if _State.compile_only or _State.lock is not None:
        sig = tuple(numba.typeof(a) for a in args)
        if sig not in kernel.overloads:
            with _State.lock if _State.lock is not None else contextlib.nullcontext():
                kernel.compile(sig)
        if _State.compile_only:
            return 0
    return kernel(*args)


def _as_3d(x: np.ndarray) -> np.ndarray:
    """``(batch, rows, cols)``: a view for 2-D inputs of any strides and contiguous N-D ones."""
    return x[None] if x.ndim == 2 else x.reshape(-1, x.shape[-2], x.shape[-1])


def _chunk(
    tasks_rows: int,
    grid_cols: int,
    run_bytes: int,
    block_cols: int,
    threads: int,
    budget: int = _TASK_BYTES,
) -> int:
    """Blocks per task: a run of ``budget`` bytes at most (L2), cut finer for load balance.

    ``run_bytes`` are the input bytes of one block column of a block row.
    """
    fit = max(1, budget // max(run_bytes, 1))
    per_row = -(-grid_cols // fit)
    want = threads * _TASKS_PER_THREAD
    if tasks_rows * per_row < want:
        per_row = -(-want // tasks_rows)
    return max(1, -(-grid_cols // per_row))


@functools.cache
def _params(fmt: ElementFormat) -> np.ndarray:
    nan_code = fmt.nan_code if fmt.nan_code is not None else 0
    max_bits = int(np.float32(fmt.max).view(np.uint32))
    return element_params(
        fmt.mbits, fmt.bias, max_bits, fmt.sign_mask, nan_code, fmt.has_negative_zero
    )


def refine_mse(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    codes: np.ndarray,
    scale_codes: np.ndarray,
) -> np.ndarray:
    """The compiled MSE scale search (:mod:`ue8m0.kernels._mse`): :func:`ue8m0.search.refine_mse`
    on a 2-D float32 ``x``, updating ``codes`` and ``scale_codes`` in place; returns the new
    float32 scales."""
    return refine_mse_fast(x, block, fmt, codes, scale_codes, _params(fmt))


@functools.cache
def _decode_params(fmt: ElementFormat) -> np.ndarray:
    fn = fmt.specials is Specials.FN
    nan_mag = fmt.sign_mask - 1 if fn else 0xFFFFFFFF
    ieee, fnuz = fmt.specials is Specials.IEEE, fmt.specials is Specials.FNUZ
    return decode_params(fmt.bits, fmt.mbits, fmt.bias, nan_mag, ieee, fnuz)


def quantize(
    x: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    rule: ScaleRule,
    eps: float,
    policy: NonFinite,
    threads: int | None = None,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Same contract as :func:`ue8m0.reference.quantize`, plus ``threads``.

    ``out``: a C-contiguous uint8 array of ``x``'s shape (checked by the caller) that receives
    the codes and is returned as them.
    """
    x3 = _as_3d(x.view(_VIEWS[x.dtype]))
    br, bc = resolve_block(block, x.shape)
    grid = scale_grid(x.shape, block)
    codes = np.empty(x.shape, dtype=np.uint8) if out is None else out
    scale = np.empty(grid, dtype=np.float32)
    sbytes = np.empty(grid, dtype=np.uint8)
    groups = br == 1 and x3.shape[-1] % bc == 0 and x3.flags.c_contiguous
    with using_threads(threads) as n:
        run = min(br, x.shape[-2]) * bc * x.dtype.itemsize
        chunk = _chunk(x3.shape[0] * grid[-2], grid[-1], run, bc, n)
        # the scale rule and element format, the same trailing arguments for both kernels
        rule_args = (
            rule.kernel_id,
            np.float32(eps),
            np.float32(fmt.max),
            fmt.emax,
            fmt.mbits,
            _params(fmt),
        )
        if groups:  # one-row blocks tiling each row: a flat (rows, groups, bc) view
            ng = x3.shape[-1] // bc
            bad = _launch(
                quantize_groups_kernel,
                x3.reshape(-1, ng, bc),
                codes.reshape(-1, ng, bc),
                scale.reshape(-1, ng),
                sbytes.reshape(-1, ng),
                chunk,
                *rule_args,
            )
        else:
            bad = _launch(
                quantize_kernel,
                x3,
                codes.reshape(x3.shape),
                scale.reshape(x3.shape[0], grid[-2], grid[-1]),
                sbytes.reshape(x3.shape[0], grid[-2], grid[-1]),
                br,
                bc,
                chunk,
                *rule_args,
            )
    if bad and policy is NonFinite.RAISE:
        _raise_nonfinite(x, scale, (br, bc), grid)
    return codes, scale, sbytes if rule.is_power_of_two else None


def _raise_nonfinite(
    x: np.ndarray, scale: np.ndarray, block: tuple[int, int], grid: tuple[int, ...]
) -> None:
    """Raise like the oracle: first bad block in C order, first non-finite value in it."""
    where = tuple(int(i) for i in np.argwhere(np.isnan(scale))[0])
    br, bc = block
    i, j = where[-2], where[-1]
    index: tuple[Any, ...] = (*where[:-2], slice(i * br, (i + 1) * br), slice(j * bc, (j + 1) * bc))
    values = x[index]
    values = values.astype(np.float32).reshape(-1)
    value = float(values[~np.isfinite(values)][0])
    raise NonFiniteError.in_block(value, where, grid)


def dequantize(
    codes: np.ndarray,
    scale: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    out_dtype: Any,
    threads: int | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Same contract as :func:`ue8m0.reference.dequantize`, plus ``threads``.

    ``out``: a C-contiguous array of ``codes``' shape and ``out_dtype`` (checked by the
    caller), filled and returned.
    """
    out_dtype = np.dtype(out_dtype)
    bf16 = out_dtype == np.dtype(ml_dtypes.bfloat16)
    result = out
    if out is None:
        out = np.empty(codes.shape, dtype=np.uint16 if bf16 else np.float32)
    else:
        out = out.view(np.uint16 if bf16 else np.float32)
    c3 = _as_3d(np.asarray(codes, dtype=np.uint8))
    br, bc = resolve_block(block, codes.shape)
    s3 = np.ascontiguousarray(scale, dtype=np.float32).reshape(c3.shape[0], *scale.shape[-2:])
    with using_threads(threads) as n:
        run = min(br, codes.shape[-2]) * bc
        chunk = _chunk(s3.shape[0] * s3.shape[1], s3.shape[2], run, bc, n, _DEQUANT_TASK_BYTES)
        _launch(
            dequantize_kernel, c3, s3, _decode_params(fmt), out.reshape(c3.shape), br, bc, chunk
        )
    if result is not None:
        return result
    return out.view(out_dtype) if bf16 else out


def hopper_gemm(
    av: np.ndarray,
    bv: np.ndarray,
    ea: np.ndarray,
    eb: np.ndarray,
    sa: np.ndarray,
    sb: np.ndarray,
    promote_units: int,
    align: int,
    threads: int | None = None,
) -> np.ndarray:
    """``ue8m0.gemm(mode="hopper")`` on operands laid out as :mod:`ue8m0.gemm` does (finite
    values ``(units, rows, step)`` float64, exponents int64 with zeros far below the rest,
    scales ``(units, rows)`` float32); returns the float32 ``(M, N)`` result. Rearranged here
    row-major by K, values as float32 (exact: FP8 values) and exponents as int32."""

    def rows_first(x: np.ndarray, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(x, 0, 1), dtype=dtype)

    out = np.empty((av.shape[1], bv.shape[1]), dtype=np.float32)
    args = [rows_first(av, np.float32), rows_first(bv, np.float32)]
    args += [rows_first(ea, np.int32), rows_first(eb, np.int32)]
    args += [rows_first(sa, np.float32), rows_first(sb, np.float32)]
    with using_threads(threads):
        _launch(hopper_gemm_kernel, *args, promote_units, align, out)
    return out
