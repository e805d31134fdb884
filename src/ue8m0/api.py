"""The public ``quantize`` / ``dequantize`` API and the :class:`QuantizedTensor` they exchange."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0 import reference
from ue8m0.blocks import BlockLike, parse_block, scale_grid, to_numpy
from ue8m0.errors import FormatNameError, InputError
from ue8m0.formats import ElementFormat, element_format
from ue8m0.policies import DEFAULT_EPS, NonFinite, ScaleRule, ScaleSearch
from ue8m0.search import refine_mse

BACKENDS = ("auto", "fast", "reference")


@dataclass(frozen=True)
class QuantizedTensor:
    """A block-scaled tensor: ``x ≈ data * scale`` with ``scale`` repeated over each block.

    ``data`` is an ml_dtypes array of ``fmt`` with the input's shape (``data.view(np.uint8)`` are
    the codes); ``scale`` is float32 with shape ``leading dims + ceil(shape[-2:] / block)``;
    ``scale_codes`` are the UE8M0 bytes of ``scale`` (None under the ``fp32`` rule).
    """

    data: np.ndarray
    scale: np.ndarray
    scale_codes: np.ndarray | None
    fmt: ElementFormat
    block: tuple[int, int]
    #: the rule that chose ``scale``; None for scales read from storage (a checkpoint), whose
    #: rule is not known
    scale_rule: ScaleRule | None

    @classmethod
    def from_stored(
        cls, data: np.ndarray, scale: np.ndarray, fmt: ElementFormat, block: tuple[int, int]
    ) -> QuantizedTensor:
        """Element codes and float32 scales read from storage, to dequantize them."""
        return cls(data, scale, None, fmt, block, None)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the quantized tensor."""
        return tuple(self.data.shape)

    @property
    def codes(self) -> np.ndarray:
        """The element codes as uint8 (a view of :attr:`data`)."""
        return self.data.view(np.uint8)

    @property
    def nbytes(self) -> int:
        """Bytes of the elements plus one byte per scale (four for ``fp32``)."""
        per_scale = 1 if self.scale_codes is not None else 4
        return int(self.data.size + per_scale * self.scale.size)


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float, np.floating)) or isinstance(eps, bool):
        raise InputError(f"eps must be a number, got {eps!r}")
    if not math.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be finite and >= 0, got {eps!r}")
    return float(eps)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise FormatNameError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return backend


def quantize(
    x: Any,
    block: BlockLike = (128, 128),
    fmt: str | ElementFormat = "e4m3",
    scale_rule: str | ScaleRule = "rceil",
    eps: float = DEFAULT_EPS,
    nonfinite: str | NonFinite = "raise",
    *,
    scale_search: str | ScaleSearch | None = None,
    out: np.ndarray | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` to ``fmt`` with one scale per ``block`` over its last two dims.

    Args:
        x: float32, float16 or bfloat16 numpy array (or torch tensor), at least 2-D; leading
            dims are a batch (stacked MoE experts).
        block: ``(rows, cols)``; ``-1`` spans a whole dim. ``(128, 128)`` weights, ``(1, 128)``
            activations, ``(1, 32)`` MX. Shapes the block does not divide are zero-padded for
            the amax.
        fmt: element format name or alias (``"e4m3"``, ``"e5m2"``, ``"float4_e2m1fn"``, ...).
        scale_rule: a :class:`~ue8m0.policies.ScaleRule` name: ``rceil`` (DeepSeek-V3.1 UE8M0),
            ``log2``, ``floor`` (OCP MX), ``ceil``, ``even`` (torchao), ``fp32``.
        eps: lower bound on each block's amax (DeepSeek and DeepGEMM use 1e-4; 0 disables).
        nonfinite: ``raise`` or ``propagate`` (:class:`~ue8m0.policies.NonFinite`).
        scale_search: ``none`` or ``mse``: per block, take the exponent below the rule's when
            that gives a smaller squared error (:class:`~ue8m0.policies.ScaleSearch`).
        out: a preallocated array for the element codes (reuse one buffer across calls):
            C-contiguous, writeable, ``x``'s shape, dtype ``uint8`` or ``fmt``'s ml_dtypes
            dtype, not overlapping ``x``. The result's ``data`` is a view of it. Both backends
            give the same bytes as without ``out``; after an error its contents are undefined.
        backend: ``auto``/``fast`` use compiled kernels where available, ``reference`` the
            numpy oracle.
        threads: worker threads of the fast kernels; default: the environment variable
            ``UE8M0_NUM_THREADS``, else every CPU numba sees. Clamped to numba's pool
            (``NUMBA_NUM_THREADS``); results are byte-identical for any thread count.

    Returns:
        A :class:`QuantizedTensor`.

    Raises:
        InputError, InputTypeError, BlockError, FormatNameError, NonFiniteError (all
        ``ValueError``/``TypeError`` subclasses) that say what is wrong.
    """
    fmt_ = element_format(fmt)
    rule = ScaleRule.parse(scale_rule)
    policy = NonFinite.parse(nonfinite)
    block_ = parse_block(block)
    eps_ = _check_eps(eps)
    backend = _check_backend(backend)
    arr = to_numpy(x)
    search = ScaleSearch.parse(scale_search)
    if search is ScaleSearch.MSE and not rule.is_power_of_two:
        raise FormatNameError("scale_search='mse' needs a power-of-two scale rule, not 'fp32'")
    out_codes = None
    if out is not None:
        out_codes = _check_out(out, arr.shape, (np.dtype(np.uint8), np.dtype(fmt_.dtype)), [x, arr])
        out_codes = out_codes.view(np.uint8)
    codes, scale, scale_codes = _dispatch_quantize(
        arr, block_, fmt_, rule, eps_, policy, backend, threads, out_codes
    )
    if search is ScaleSearch.MSE:
        assert scale_codes is not None
        codes, scale, scale_codes = refine_mse(arr, block_, fmt_, codes, scale_codes)
    if out_codes is not None and codes is not out_codes:
        np.copyto(out_codes, codes)  # the reference backend and scale_search allocate
        codes = out_codes
    return QuantizedTensor(codes.view(fmt_.dtype), scale, scale_codes, fmt_, block_, rule)


def _check_out(
    out: Any, shape: tuple[int, ...], dtypes: tuple[np.dtype, ...], inputs: list[Any]
) -> np.ndarray:
    """``out`` if it is a usable output buffer (see ``out`` of :func:`quantize`), else raise."""
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be a numpy array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype not in dtypes:
        wanted = " or ".join(str(d) for d in dtypes)
        raise InputError(f"out has dtype {out.dtype}, expected {wanted}")
    if not out.flags.c_contiguous:
        raise InputError("out must be C-contiguous")
    if not out.flags.writeable:
        raise InputError("out is read-only")
    for a in inputs:
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise InputError("out overlaps an input array; pass a separate buffer")
    return out


def _dispatch_quantize(
    arr: np.ndarray,
    block: tuple[int, int],
    fmt: ElementFormat,
    rule: ScaleRule,
    eps: float,
    policy: NonFinite,
    backend: str,
    threads: int | None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if backend != "reference":
        fast = _fast_backend()
        if fast is not None:
            return fast.quantize(arr, block, fmt, rule, eps, policy, threads, out=out)
        if backend == "fast":
            raise FormatNameError("backend 'fast' is not available (numba kernels not importable)")
    return reference.quantize(arr, block, fmt, rule, eps, policy)


def _fast_backend() -> Any:
    """The compiled-kernel module, or None where numba cannot be imported."""
    try:
        from ue8m0 import kernels
    except ImportError:
        return None
    return kernels


_OUT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


def dequantize(
    q: QuantizedTensor,
    dtype: Any = np.float32,
    *,
    out: np.ndarray | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> np.ndarray:
    """``data * scale`` (scale repeated over each block) in float32, cast to ``dtype``.

    ``dtype`` is ``np.float32`` or ``ml_dtypes.bfloat16`` (rounded to nearest even). Exact for
    power-of-two scales whenever the product is representable. ``out``: a preallocated result
    (C-contiguous, writeable, ``q``'s shape, dtype ``dtype``, not overlapping ``q``'s arrays),
    filled and returned. ``backend`` and ``threads`` as in :func:`quantize`.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype not in _OUT_DTYPES:
        raise FormatNameError(f"dequantize dtype must be float32 or bfloat16, got {out_dtype}")
    backend = _check_backend(backend)
    expected = scale_grid(q.shape, q.block)
    if tuple(q.scale.shape) != expected:
        raise InputError(f"scale shape {q.scale.shape} does not match {expected} for {q.shape}")
    if out is not None:
        _check_out(out, q.shape, (out_dtype,), [q.data, q.scale, q.scale_codes])
    if backend != "reference":
        fast = _fast_backend()
        if fast is not None:
            return fast.dequantize(q.codes, q.scale, q.block, q.fmt, out_dtype, threads, out=out)
        if backend == "fast":
            raise FormatNameError("backend 'fast' is not available (numba kernels not importable)")
    result = reference.dequantize(q.codes, q.scale, q.block, q.fmt, out_dtype)
    if out is None:
        return result
    np.copyto(out, result)
    return out
