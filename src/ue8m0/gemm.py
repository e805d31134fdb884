"""Emulate block-scaled FP8 GEMMs on CPU: ``C = A · Bᵀ`` from two :class:`QuantizedTensor`.

``A`` is ``(M, K)`` (1×128 or 1×32 activation blocks), ``B`` is ``(N, K)`` (128×128 or 1×32
weight blocks); any blocks whose K extents share a common K-block work. Four modes:

``exact``
    ``dequantize(A) @ dequantize(B).T`` in float64 (the reference; float64 output).
``fp32``
    An ideal promoted accumulator: per K-block the unscaled element products are summed
    (exactly: float64 BLAS, see below), rounded once to float32, multiplied by the float32
    ``scale_a * scale_b`` and added to a float32 accumulator. (A Hopper GPU's block sums are not
    exact: see ``hopper``.)
``hopper``
    Bit-exact with an NVIDIA H200's FP8 tensor cores (measured: ``bench/hopper_gemm_probe.py``;
    cuBLAS's block-scaled and tensor-wise FP8 GEMMs and Triton ``tl.dot``, every output of
    K = 4096 products equal). Per ``wgmma`` step of 32 elements of K, the accumulator and the 32
    exact element products are each truncated to a multiple of ``2**(E - 13)``, ``E`` the
    largest of the products' exponent sums ``e_a + e_b`` (``e = floor(log2 |x|)``) and the
    accumulator's exponent; the truncated addends are summed and the sum is truncated to 13
    fraction bits. (How subnormals count cannot matter: their products lie on a grid finer than
    any ``2**(E - 13)`` they could set.) Every ``promote_every`` elements (128: cuBLAS's
    block-scaled and default paths, and DeepGEMM's design, not measured here; ``None``: never,
    cuBLAS's ``use_fast_accum``) the accumulator times the float32 ``scale_a * scale_b`` is
    added to a float32 result (round to nearest) and cleared. With power-of-two (UE8M0) scales the order of those multiplies cannot
    matter; for float32 scales it is this model's choice.
``limited``
    A model of a tensor-core accumulator. Every ``mma_k`` elements of K the exact, scaled sum of
    that group is added to an accumulator that is a float32 register keeping only
    ``mantissa_bits`` of its 23 fraction bits (the rest cut off by ``rounding``); every
    ``promote_every`` elements of K the accumulator is added to a float32 result and cleared.
    With ``promote_every`` equal to the K-block, ``mma_k`` its default and ``mantissa_bits >= 23``
    it is exactly ``fp32`` (tested).

Model parameters and their sources:

* ``mantissa_bits=13`` — DeepSeek-V3 Technical Report (arXiv:2412.19437, §3.3.2 "Increasing
  Accumulation Precision"): "the accumulation precision of FP8 GEMM on NVIDIA H800 GPUs is
  limited to retaining around 14 bits" — 13 fraction bits plus the implicit one. SageAttention2
  (arXiv:2411.10958) measured the same accumulator as "FP22": 1 sign, 8 exponent, 13 mantissa
  bits, for ``mma.f32.f8.f8.f32`` on Ada and Hopper.
* ``promote_every=128`` — the same report: "setting N_C = 128 elements, equivalent to 4 WGMMAs,
  represents the minimal accumulation interval that can significantly improve precision";
  DeepGEMM's SM90 kernels promote once per 128-wide K-block. ``None`` never promotes (the whole
  of K accumulated on the tensor core, the report's un-promoted baseline).
* ``rounding="rtz"`` — Fasi, Higham, Mikaitis and Pranesh, "Numerical behavior of NVIDIA tensor
  cores", PeerJ Comput. Sci. 7:e330 (2021): tensor-core accumulation truncates (rounds toward
  zero). Measured on V100/T4/A100, assumed for Hopper FP8; ``"rne"`` is the alternative.
* ``mma_k`` — elements per accumulator update; default the K-block (so the fp32 identity above
  holds). 32 is one Hopper FP8 WGMMA instruction (``wgmma.m64nNk32``), a finer model.

Exactness: the element products of one K-block are summed in float64 BLAS. For e4m3 (and the
FP6/FP4 formats) a 128-element sum spans at most 43 bits, so it is exact in any order; e5m2 sums
with extreme magnitudes may round in float64, far below the float32 rounding that follows.
Speed: block-wise BLAS over K-blocks, vectorised over M×N; see ``bench/gemm_error_vs_k.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ue8m0.api import BACKENDS, QuantizedTensor, dequantize
from ue8m0.blocks import resolve_block
from ue8m0.errors import FormatNameError, InputError, InputTypeError
from ue8m0.formats import decode_table

MODES = ("exact", "fp32", "limited", "hopper")
ROUNDINGS = ("rtz", "rne")

#: DeepSeek-V3 report: "around 14 bits" retained = 13 fraction bits + the implicit one
HOPPER_MANTISSA_BITS = 13
#: DeepSeek-V3 report: promotion interval N_C = 128 elements of K
HOPPER_PROMOTION_INTERVAL = 128
#: ``hopper`` mode (measured on an H200): elements of K per tensor-core step (one FP8 ``wgmma``)
HOPPER_MMA_K = 32
#: ``hopper`` mode: bits kept below the largest addend's exponent, and fraction bits of the sum
HOPPER_ALIGN_BITS = 13
#: the exponent given to zeros (below any product of two finite FP8 values)
_ZERO_EXPONENT = -(1 << 20)


def _operand(q: object, name: str) -> QuantizedTensor:
    if not isinstance(q, QuantizedTensor):
        raise InputTypeError(f"gemm: {name} must be a QuantizedTensor, got {type(q).__name__}")
    if len(q.shape) != 2:
        raise InputError(f"gemm: {name} must be 2-D, got shape {q.shape}")
    return q


class _Operands:
    """Element values and per-row scales of A and B, walked ``unit`` elements of K at a time.

    Values are rearranged once to ``(K / unit, rows, unit)`` (K zero-padded, which adds exact
    zeros) so each step is one contiguous BLAS call; the step results are written into reused
    buffers (consume them before the next step).
    """

    def __init__(self, a: QuantizedTensor, b: QuantizedTensor, unit: int | None = None) -> None:
        self.k = a.shape[1]
        ka = resolve_block(a.block, a.shape)[1]
        kb = resolve_block(b.block, b.shape)[1]
        self.chunk = math.gcd(ka, kb)
        self.unit = self.chunk if unit is None else unit
        self.units = -(-self.k // self.unit)
        self.av, self.sa = self._arrange(a, ka)
        self.bv, self.sb = self._arrange(b, kb)
        self.shape = (a.shape[0], b.shape[0])
        self.dot = np.empty(self.shape, dtype=np.float64)
        self.scale = np.empty(self.shape, dtype=np.float32)

    def _arrange(self, q: QuantizedTensor, kq: int) -> tuple[np.ndarray, np.ndarray]:
        rows = q.shape[0]
        values = np.zeros((rows, self.units * self.unit), dtype=np.float64)
        values[:, : self.k] = decode_table(q.fmt)[q.codes]  # exact: every code is a float32
        blocks = np.ascontiguousarray(values.reshape(rows, self.units, self.unit).swapaxes(0, 1))
        br = resolve_block(q.block, q.shape)[0]
        per_row = q.scale[np.arange(rows) // br].astype(np.float32)  # (rows, K-blocks of q)
        starts = np.arange(self.units) * self.unit // kq
        return blocks, np.ascontiguousarray(per_row[:, starts].T)  # (units, rows)

    def step(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """``(exact unscaled dot, float32 scale_a * scale_b)`` of unit ``u`` of K."""
        np.matmul(self.av[u], self.bv[u].T, out=self.dot)
        return self.dot, self.step_scale(u)

    def step_scale(self, u: int) -> np.ndarray:
        """The float32 ``scale_a * scale_b`` of unit ``u`` of K."""
        np.multiply.outer(self.sa[u], self.sb[u], out=self.scale)
        return self.scale


def _cut(acc: np.ndarray, mantissa_bits: int, rounding: str) -> np.ndarray:
    """Keep ``mantissa_bits`` fraction bits of float32 ``acc`` (in place)."""
    drop = 23 - mantissa_bits
    if drop <= 0:
        return acc
    bits = acc.view(np.uint32)
    mask = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    if rounding == "rne":
        finite = np.isfinite(acc)
        bias = np.uint32((1 << (drop - 1)) - 1) + ((bits >> np.uint32(drop)) & np.uint32(1))
        bits += np.where(finite, bias, np.uint32(0)).astype(np.uint32)
    bits &= mask
    return acc


def gemm(
    a: QuantizedTensor,
    b: QuantizedTensor,
    mode: str = "fp32",
    *,
    mantissa_bits: int = HOPPER_MANTISSA_BITS,
    promote_every: int | None = HOPPER_PROMOTION_INTERVAL,
    mma_k: int | None = None,
    rounding: str = "rtz",
    backend: str = "auto",
    threads: int | None = None,
) -> np.ndarray:
    """``C = A · Bᵀ`` for quantized ``A (M, K)`` and ``B (N, K)``; see the module docs.

    Args:
        a, b: :class:`QuantizedTensor` operands with the same K.
        mode: ``exact`` (float64 result), ``fp32``, ``limited`` or ``hopper`` (float32 results).
        mantissa_bits: ``limited``: fraction bits the accumulator keeps (1..23; more is 23).
        promote_every: ``limited``, ``hopper``: elements of K between promotions to float32 (a
            multiple of ``mma_k``; for ``hopper`` a multiple of 32 that divides the K-block, or
            ``None`` when the scales are constant along K); ``None`` never promotes.
        mma_k: ``limited``: elements of K per accumulator update (default the K-block: the
            gcd of both operands' block columns); it and the K-block must divide one another.
        rounding: ``limited``: ``rtz`` (truncate, as tensor cores do) or ``rne``.
        backend: ``hopper``: ``auto`` / ``fast`` (the compiled kernel) or ``reference`` (the
            numpy oracle, 10–20× slower; bit-identical). The other modes are numpy + BLAS.
        threads: ``hopper`` with the compiled kernel: threads (default: every core, or
            ``UE8M0_NUM_THREADS``).
    """
    a, b = _operand(a, "a"), _operand(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"gemm: K differs: a is {a.shape}, b is {b.shape} (C = A · Bᵀ)")
    if mode not in MODES:
        raise FormatNameError(f"gemm: unknown mode {mode!r}; known: {', '.join(MODES)}")
    if backend not in BACKENDS:  # checked for every mode, though only hopper has two
        raise FormatNameError(f"gemm: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if mode == "exact":
        da = dequantize(a).astype(np.float64)
        db = dequantize(b).astype(np.float64)
        return np.asarray(da @ db.T)
    chunk = math.gcd(resolve_block(a.block, a.shape)[1], resolve_block(b.block, b.shape)[1])
    if mode == "fp32":
        return _fp32(_Operands(a, b))
    if mode == "hopper":
        ops = _Operands(a, b, HOPPER_MMA_K)
        promote = _hopper_promotion(promote_every, chunk, a)
        fast = _hopper_backend(backend)
        if fast is None or not (np.isfinite(ops.av).all() and np.isfinite(ops.bv).all()):
            return _hopper(ops, promote)  # the kernel sums in integers: finite inputs only
        ea, eb = _exponents(ops.av), _exponents(ops.bv)
        units = promote // HOPPER_MMA_K
        return fast(ops.av, ops.bv, ea, eb, ops.sa, ops.sb, units, HOPPER_ALIGN_BITS, threads)
    if rounding not in ROUNDINGS:
        raise FormatNameError(f"gemm: unknown rounding {rounding!r}; known: {ROUNDINGS}")
    if mantissa_bits < 1:
        raise InputError(f"gemm: mantissa_bits must be >= 1, got {mantissa_bits}")
    step = chunk if mma_k is None else mma_k
    if step < 1 or (step % chunk and chunk % step):
        raise InputError(f"gemm: mma_k={mma_k} and the K-block {chunk} must divide one another")
    promote = a.shape[1] if not promote_every else promote_every
    if promote % step:
        raise InputError(f"gemm: promote_every={promote_every} is not a multiple of mma_k={step}")
    ops = _Operands(a, b, min(step, chunk))
    return _limited(ops, min(mantissa_bits, 23), promote, step, rounding)


def _fp32(ops: _Operands) -> np.ndarray:
    c = np.zeros(ops.shape, dtype=np.float32)
    part = np.empty(ops.shape, dtype=np.float32)
    for u in range(ops.units):
        dot, scale = ops.step(u)
        np.copyto(part, dot, casting="same_kind")  # the block's exact sum rounded once
        part *= scale
        c += part
    return c


def _limited(ops: _Operands, mbits: int, promote: int, step: int, rounding: str) -> np.ndarray:
    c = np.zeros(ops.shape, dtype=np.float32)
    acc = np.zeros(ops.shape, dtype=np.float32)
    group = np.empty(ops.shape, dtype=np.float64)
    per_group = step // ops.unit
    for g in range(0, ops.units, per_group):
        group[...] = acc
        for u in range(g, min(g + per_group, ops.units)):
            dot, scale = ops.step(u)
            dot *= scale  # float32 scale product applied in float64: exact for powers of two
            group += dot
        np.copyto(acc, group, casting="same_kind")
        _cut(acc, mbits, rounding)
        end = min((g + per_group) * ops.unit, ops.k)
        if end % promote == 0 or end == ops.k:
            c += acc
            acc[...] = 0
    return c


def _hopper_backend(backend: str) -> Any:
    """The compiled ``hopper`` kernel, or None for the numpy oracle."""
    if backend == "reference":
        return None
    try:
        from ue8m0.kernels import hopper_gemm
    except ImportError:
        if backend == "fast":
            raise FormatNameError(
                "gemm: backend 'fast' is not available (numba not importable)"
            ) from None
        return None
    return hopper_gemm


def _hopper_promotion(promote_every: int | None, chunk: int, a: QuantizedTensor) -> int:
    k = a.shape[1]
    if promote_every is None:
        if chunk < k:
            raise InputError(
                f"gemm: promote_every=None needs one scale along K (the K-block is {chunk}, "
                f"K is {k}): a tensor core applies block scales only when it promotes"
            )
        return -(-k // HOPPER_MMA_K) * HOPPER_MMA_K
    if promote_every < 1 or promote_every % HOPPER_MMA_K or (chunk < k and chunk % promote_every):
        raise InputError(
            f"gemm: hopper promote_every={promote_every} must be a multiple of {HOPPER_MMA_K} "
            f"that divides the K-block ({chunk})"
        )
    return promote_every


def _exponents(values: np.ndarray) -> np.ndarray:
    """``floor(log2 |x|)`` per element (zeros: far below any other)."""
    _, e = np.frexp(values)
    return np.where(values == 0, _ZERO_EXPONENT, e - 1).astype(np.int64)


def _truncate(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` (float64) cut to ``bits`` fraction bits, toward zero."""
    mant, e = np.frexp(x)
    return np.ldexp(np.trunc(np.ldexp(mant, bits + 1)), e - (bits + 1))


def _hopper(ops: _Operands, promote: int, max_bytes: int = 1 << 26) -> np.ndarray:
    """The ``hopper`` mode; rows of A in bands so one step's products stay under ``max_bytes``."""
    ea = _exponents(ops.av)
    eb = _exponents(ops.bv)
    m, n = ops.shape
    c = np.zeros(ops.shape, dtype=np.float32)
    acc = np.zeros(ops.shape, dtype=np.float64)
    band = max(1, max_bytes // (8 * n * (HOPPER_MMA_K + 1)))
    for u in range(ops.units):
        for r0 in range(0, m, band):
            rows = slice(r0, min(m, r0 + band))
            addends = np.empty((rows.stop - r0, n, HOPPER_MMA_K + 1))
            np.multiply(ops.av[u, rows, None, :], ops.bv[u, None, :, :], out=addends[..., 1:])
            addends[..., 0] = acc[rows]
            top = (ea[u, rows, None, :] + eb[u, None, :, :]).max(axis=-1)
            np.maximum(top, _exponents(acc[rows]), out=top)
            top[top <= _ZERO_EXPONENT // 2] = 0  # all addends zero: any quantum will do
            quantum = np.ldexp(1.0, top - HOPPER_ALIGN_BITS)
            addends /= quantum[..., None]  # exact: powers of two, no underflow
            np.trunc(addends, out=addends)
            total = addends.sum(axis=-1) * quantum  # exact: integers below 2**53
            acc[rows] = _truncate(total, HOPPER_ALIGN_BITS)
        if ((u + 1) * HOPPER_MMA_K) % promote == 0 or u == ops.units - 1:
            part = acc.astype(np.float32)
            part *= ops.step_scale(u)
            c += part
            acc[...] = 0
    return c
