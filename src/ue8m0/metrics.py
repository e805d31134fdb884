"""Error metrics of a quantized tensor against its reference, exact and streamable.

Every metric is computed in float64 from running sums, so a tensor can be fed in row chunks
(:class:`ErrorStats`) and give the same numbers as in one piece. With ``x`` the reference,
``y`` its quantized-dequantized twin and ``e = y - x``:

- ``sqnr_db = 10 log10(Σx² / Σe²)`` (``inf`` when ``e == 0``);
- ``rel_frobenius = ‖e‖ / ‖x‖``;
- ``cosine = Σxy / (‖x‖ ‖y‖)``;
- ``max_abs_error = max |e|``;
- ``saturated``: fraction of elements clipped: ``|x| > (elem_max + ulp/2) · scale``;
- ``flushed``: fraction of the non-zero elements of ``x`` whose ``y`` is zero;
- ``worst_row_sqnr_db``: the lowest SQNR of one row (output channel of a Linear weight).
  Tensor SQNR is energy-weighted: one large outlier dominates both sums and hides the damage
  its 128×128 block does to the small values of the other 127 rows. The worst row shows it.

Block headroom is ``log2(elem_max · scale / amax)`` per block: how many bits of the element
range the scale leaves unused. ``rceil`` gives ``[0, 1)``, ``fp32`` gives 0, ``floor`` may go
below 0 (its largest elements saturate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ue8m0.api import QuantizedTensor
from ue8m0.blocks import resolve_block
from ue8m0.formats import ElementFormat


def _as64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def sqnr_db_from_sums(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``: ``inf`` without noise, ``-inf`` without signal."""
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref: Any, approx: Any) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``ref`` in dB."""
    x, y = _as64(ref), _as64(approx)
    return sqnr_db_from_sums(float(np.sum(x * x)), float(np.sum((y - x) ** 2)))


def rel_frobenius(ref: Any, approx: Any) -> float:
    """``‖approx - ref‖_F / ‖ref‖_F`` (nan when ``ref`` is all zero)."""
    x, y = _as64(ref), _as64(approx)
    norm = math.sqrt(float(np.sum(x * x)))
    err = math.sqrt(float(np.sum((y - x) ** 2)))
    return err / norm if norm > 0 else (0.0 if err == 0 else math.inf)


def cosine(ref: Any, approx: Any) -> float:
    """Cosine similarity of the flattened arrays (nan when either is all zero)."""
    x, y = _as64(ref).ravel(), _as64(approx).ravel()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else math.nan


def max_abs_error(ref: Any, approx: Any) -> float:
    """``max |approx - ref|``."""
    return float(np.max(np.abs(_as64(approx) - _as64(ref))))


def rowwise_cosine(a: Any, b: Any) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (2-D inputs)."""
    x, y = _as64(a), _as64(b)
    den = np.sqrt(np.sum(x * x, axis=-1) * np.sum(y * y, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(x * y, axis=-1) / den


def rankdata(a: Any) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (as scipy's default)."""
    v = np.asarray(a).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.r_[first[1:], v.size]
    average = (first + ends - 1) / 2.0 + 1.0
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two 1-D arrays (Pearson of their average ranks)."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else math.nan


def block_reduce(x: np.ndarray, block: tuple[int, int], op: str = "sum") -> np.ndarray:
    """Reduce each ``block`` of the last two dims with ``sum`` or ``max`` (zero-padded edges).

    Returns an array of the scale grid's shape (leading dims kept).
    """
    br, bc = resolve_block(block, x.shape)
    rows, cols = x.shape[-2], x.shape[-1]
    gr, gc = -(-rows // br), -(-cols // bc)
    if (gr * br, gc * bc) != (rows, cols):
        pad = [(0, 0)] * (x.ndim - 2) + [(0, gr * br - rows), (0, gc * bc - cols)]
        x = np.pad(x, pad)
    shaped = x.reshape((*x.shape[:-2], gr, br, gc, bc))
    reducer = np.max if op == "max" else np.sum
    return reducer(shaped, axis=(-3, -1))


def expand_blocks(grid: np.ndarray, shape: tuple[int, ...], block: tuple[int, int]) -> np.ndarray:
    """Repeat each entry of a scale-grid array over its block, cropped to ``shape``."""
    br, bc = resolve_block(block, shape)
    full = np.repeat(np.repeat(grid, br, axis=-2), bc, axis=-1)
    return full[..., : shape[-2], : shape[-1]]


def block_amax(x: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Largest ``|x|`` of each block (float64, scale-grid shape)."""
    return block_reduce(np.abs(np.asarray(x)), block, "max").astype(np.float64)


def headroom_bits(x: np.ndarray, q: QuantizedTensor) -> np.ndarray:
    """``log2(elem_max · scale / amax)`` per block of ``q`` (nan for all-zero blocks).

    ``amax`` is the block's true largest ``|x|``, not the eps-clamped one: a block below
    ``eps`` shows the extra range the clamp leaves unused.
    """
    amax = block_amax(x, q.block)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log2(q.fmt.max * q.scale.astype(np.float64) / amax)
    return np.where(amax > 0, out, np.nan)


def saturation_limit(fmt: ElementFormat) -> float:
    """``elem_max`` plus half its ulp: scaled values above it are clipped, not rounded, to max."""
    return fmt.max + math.ldexp(0.5, fmt.emax - fmt.mbits)


def saturated_mask(x: np.ndarray, q: QuantizedTensor) -> np.ndarray:
    """Elements the format clipped: ``|x| > (elem_max + ulp/2) · scale`` of their block.

    Values up to half an ulp above ``elem_max`` round to it as any value rounds; they are not
    counted (an fp32 scale ``amax / elem_max`` puts ``amax`` there by float32 rounding).
    """
    limit = expand_blocks(saturation_limit(q.fmt) * q.scale.astype(np.float64), q.shape, q.block)
    return np.abs(_as64(x)) > limit


@dataclass
class ErrorStats:
    """Running sums of one tensor's error; :meth:`update` per chunk, :meth:`result` at the end.

    Chunks are whole rows (a slice of the second-to-last dim), so per-row SQNR is exact.
    """

    count: int = 0
    nonzero: int = 0
    ref_sq: float = 0.0
    approx_sq: float = 0.0
    err_sq: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    saturated: int = 0
    flushed: int = 0
    worst_row_sqnr: float = math.inf

    def update(
        self, ref: np.ndarray, approx: np.ndarray, saturated: np.ndarray | None = None
    ) -> None:
        """Add a chunk (``ref`` and ``approx`` of the same shape, at least 2-D).

        The reference computation (float64 numpy temporaries); the report's fast path computes
        the same sums in one compiled pass and adds them with :meth:`add_sums`.
        """
        x, y = _as64(ref), _as64(approx)
        e = y - x
        nz = x != 0
        self.add_sums(
            count=x.size,
            nonzero=int(np.count_nonzero(nz)),
            flushed=int(np.count_nonzero(nz & (y == 0))),
            saturated=int(np.count_nonzero(saturated)) if saturated is not None else 0,
            row_ref=np.sum(x * x, axis=-1).ravel(),
            row_err=np.sum(e * e, axis=-1).ravel(),
            approx_sq=float(np.sum(y * y)),
            dot=float(np.sum(x * y)),
            max_abs=float(np.max(np.abs(e))) if e.size else 0.0,
        )

    def add_sums(
        self,
        *,
        count: int,
        nonzero: int,
        flushed: int,
        saturated: int,
        row_ref: np.ndarray,
        row_err: np.ndarray,
        approx_sq: float,
        dot: float,
        max_abs: float,
    ) -> None:
        """Add a chunk given as its sums: per-row ``Σx²`` and ``Σe²`` (float64), the chunk's
        ``Σy²``, ``Σxy``, ``max |e|`` and its element counts."""
        self.count += count
        self.nonzero += nonzero
        self.flushed += flushed
        self.saturated += saturated
        self.ref_sq += float(row_ref.sum())
        self.err_sq += float(row_err.sum())
        self.approx_sq += approx_sq
        self.dot += dot
        self.max_abs = max(self.max_abs, max_abs)
        noisy = row_err > 0
        if noisy.any():
            with np.errstate(divide="ignore"):
                row_db = 10.0 * np.log10(row_ref[noisy] / row_err[noisy])
            self.worst_row_sqnr = min(self.worst_row_sqnr, float(np.min(row_db)))

    def merge(self, other: ErrorStats) -> None:
        """Add the sums of ``other`` (another chunk or tensor) to these."""
        self.count += other.count
        self.nonzero += other.nonzero
        self.ref_sq += other.ref_sq
        self.approx_sq += other.approx_sq
        self.err_sq += other.err_sq
        self.dot += other.dot
        self.max_abs = max(self.max_abs, other.max_abs)
        self.saturated += other.saturated
        self.flushed += other.flushed
        self.worst_row_sqnr = min(self.worst_row_sqnr, other.worst_row_sqnr)

    def result(self) -> dict[str, float]:
        """The metrics named in the module docstring."""
        den = math.sqrt(self.ref_sq * self.approx_sq)
        return {
            "sqnr_db": sqnr_db_from_sums(self.ref_sq, self.err_sq),
            "worst_row_sqnr_db": self.worst_row_sqnr,
            "rel_frobenius": math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else math.nan,
            "cosine": self.dot / den if den > 0 else math.nan,
            "max_abs_error": self.max_abs,
            "saturated": self.saturated / self.count if self.count else 0.0,
            "flushed": self.flushed / self.nonzero if self.nonzero else 0.0,
        }


def fraction_saturated(x: np.ndarray, q: QuantizedTensor) -> float:
    """Fraction of the elements of ``x`` that ``q`` clipped to the format's max (see
    :func:`saturated_mask`)."""
    return float(np.mean(saturated_mask(x, q)))


def fraction_flushed(ref: Any, approx: Any) -> float:
    """Fraction of the non-zero elements of ``ref`` that became zero in ``approx``."""
    x, y = _as64(ref), _as64(approx)
    nz = x != 0
    total = int(np.count_nonzero(nz))
    return int(np.count_nonzero(nz & (y == 0))) / total if total else 0.0


def tensor_metrics(x: np.ndarray, q: QuantizedTensor, approx: np.ndarray) -> dict[str, float]:
    """Every metric of one tensor in one piece (``approx = dequantize(q)``)."""
    stats = ErrorStats()
    stats.update(x, approx, saturated_mask(x, q))
    return stats.result()
