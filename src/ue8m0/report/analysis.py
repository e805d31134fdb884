"""Stream a checkpoint through the recipes and accumulate, per tensor and recipe, every metric.

Each tensor is read in slabs of whole rows, a multiple of every recipe's block height, so the
quantization of a slab is exactly the quantization of those rows of the whole tensor and the
sums add up to the tensor's metrics. Every recipe quantizes through :meth:`Recipe.quantize`
(the public API and its fast kernels); a scale search added to recipes applies here unchanged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.api import dequantize
from ue8m0.checkpoint.safetensors import DTYPES
from ue8m0.errors import CheckpointError, NonFiniteError
from ue8m0.metrics import ErrorStats, block_reduce, headroom_bits, saturated_mask
from ue8m0.recipes import Recipe
from ue8m0.report.progress import ReportProgress
from ue8m0.report.source import TensorRef, iter_slabs, list_tensors

#: headroom histogram bins (bits): 1/16 bit wide, values outside land in the end bins
HEADROOM_EDGES = np.linspace(-2.0, 8.0, 161) - 1 / 32  # 0 (the fp32 rule) mid-bin
#: at most this many per-block errors are kept per tensor and recipe (for the scatter plot)
BLOCK_SAMPLES = 4096
#: default slab size in float32 bytes (memory bound of the report, per recipe in flight)
DEFAULT_SLAB_BYTES = 64 << 20

#: ranking metrics: name -> True when larger is worse
RANK_METRICS: dict[str, bool] = {
    "worst_row_sqnr_db": False,
    "sqnr_db": False,
    "rel_frobenius": True,
    "max_abs_error": True,
    "flushed": True,
    "saturated": True,
}

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The layer number in a tensor name (``model.layers.3.mlp...`` -> 3), or None."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


@dataclass
class HeadroomStats:
    """Histogram and moments of per-block headroom (bits); all-zero blocks counted apart."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(HEADROOM_EDGES) - 1, np.int64))
    blocks: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    zero_blocks: int = 0

    def update(self, values: np.ndarray) -> None:
        flat = values.ravel()
        finite = flat[np.isfinite(flat)]
        self.zero_blocks += flat.size - finite.size
        if finite.size:
            clipped = np.clip(finite, HEADROOM_EDGES[0], np.nextafter(HEADROOM_EDGES[-1], 0))
            self.counts += np.histogram(clipped, HEADROOM_EDGES)[0]
            self.blocks += finite.size
            self.total += float(finite.sum())
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))

    def merge(self, other: HeadroomStats) -> None:
        self.counts = self.counts + other.counts
        self.blocks += other.blocks
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.zero_blocks += other.zero_blocks

    def result(self) -> dict[str, Any]:
        return {
            "mean_bits": self.total / self.blocks if self.blocks else math.nan,
            "min_bits": self.low if self.blocks else math.nan,
            "max_bits": self.high if self.blocks else math.nan,
            "blocks": self.blocks,
            "zero_blocks": self.zero_blocks,
        }


@dataclass
class RecipeStats:
    """Everything measured for one recipe over one tensor (or, merged, over many)."""

    errors: ErrorStats = field(default_factory=ErrorStats)
    headroom: HeadroomStats = field(default_factory=HeadroomStats)
    exponents: Counter[int] = field(default_factory=Counter)
    block_errors: list[np.ndarray] = field(default_factory=list)

    def update(self, x: np.ndarray, recipe: Recipe, sample_stride: int) -> None:
        """Quantize the slab ``x`` with ``recipe`` and add what it cost: the reference path
        (numpy, float64 temporaries, :meth:`Recipe.quantize` with the numpy MSE search), the
        oracle of :meth:`update_fast`."""
        q = recipe.quantize(x)
        y = dequantize(q)
        self.errors.update(x, y, saturated_mask(x, q))
        self.headroom.update(headroom_bits(x, q))
        scale = q.scale[np.isfinite(q.scale) & (q.scale > 0)]
        exps, counts = np.unique(np.floor(np.log2(scale.astype(np.float64))), return_counts=True)
        self.exponents.update({int(e): int(c) for e, c in zip(exps, counts, strict=True)})
        x64 = x.astype(np.float64)
        err_sq = block_reduce((y - x64) ** 2, q.block).ravel()
        ref_sq = block_reduce(x64 * x64, q.block).ravel()
        self._sample(err_sq, ref_sq, sample_stride)

    def update_fast(
        self, x: np.ndarray, recipe: Recipe, sample_stride: int, buffers: Any, threads: int | None
    ) -> None:
        """:meth:`update` for a 2-D float32 slab in one compiled pass (:mod:`.fused`)."""
        from ue8m0.report.fused import measure_slab, scale_exponents

        q, sums = measure_slab(x, recipe, buffers, threads)
        self.errors.add_sums(**sums["errors"])
        amax = sums["amax"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            headroom = np.log2(q.fmt.max * q.scale.astype(np.float64) / amax)
        self.headroom.update(np.where(amax > 0, headroom, np.nan))
        self.exponents.update(scale_exponents(q.scale))
        self._sample(sums["block_err"].ravel(), sums["block_ref"].ravel(), sample_stride)

    def _sample(self, err_sq: np.ndarray, ref_sq: np.ndarray, stride: int) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.sqrt(err_sq[::stride] / ref_sq[::stride])
        self.block_errors.append(rel.astype(np.float32))

    def merge(self, other: RecipeStats) -> None:
        self.errors.merge(other.errors)
        self.headroom.merge(other.headroom)
        self.exponents.update(other.exponents)
        self.block_errors.extend(other.block_errors)

    def block_error_samples(self) -> np.ndarray:
        """Per-block relative Frobenius errors kept for plotting (nan for all-zero blocks)."""
        return np.concatenate(self.block_errors) if self.block_errors else np.zeros(0, np.float32)

    def result(self) -> dict[str, Any]:
        """Metrics, headroom summary and scale-exponent histogram as plain values."""
        out: dict[str, Any] = dict(self.errors.result())
        out["headroom"] = self.headroom.result()
        out["scale_exponents"] = {str(k): v for k, v in sorted(self.exponents.items())}
        return out


@dataclass
class TensorReport:
    """One tensor measured under every recipe."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    recipes: dict[str, RecipeStats]

    @property
    def layer(self) -> int | None:
        return layer_of(self.name)


@dataclass
class CheckpointReport:
    """The report of one checkpoint: tensors in checkpoint order, skipped tensors with reasons."""

    source: str
    recipes: list[Recipe]
    tensors: list[TensorReport]
    skipped: dict[str, str] = field(default_factory=dict)
    rank_by: str = "worst_row_sqnr_db"

    def totals(self) -> dict[str, RecipeStats]:
        """Each recipe's stats merged over all tensors."""
        out = {r.name: RecipeStats() for r in self.recipes}
        for tensor in self.tensors:
            for name, stats in tensor.recipes.items():
                out[name].merge(stats)
        return out

    def ranked(self, recipe: str | None = None, metric: str | None = None) -> list[TensorReport]:
        """Tensors worst first by ``metric`` under ``recipe`` (defaults: the first recipe)."""
        recipe = recipe or self.recipes[0].name
        metric = metric or self.rank_by
        worse_if_larger = RANK_METRICS[metric]

        def key(t: TensorReport) -> tuple[bool, float]:
            value = t.recipes[recipe].errors.result()[metric]
            if math.isnan(value):
                return (True, 0.0)
            return (False, -value if worse_if_larger else value)

        return sorted(self.tensors, key=key)

    def by_layer(self) -> dict[int, dict[str, ErrorStats]]:
        """Error sums per layer number and recipe (tensors without a layer number left out)."""
        out: dict[int, dict[str, ErrorStats]] = {}
        for tensor in self.tensors:
            if tensor.layer is None:
                continue
            layer = out.setdefault(tensor.layer, {r.name: ErrorStats() for r in self.recipes})
            for name, stats in tensor.recipes.items():
                layer[name].merge(stats.errors)
        return dict(sorted(out.items()))


def slab_rows(recipes: Sequence[Recipe], shape: tuple[int, ...], slab_bytes: int) -> int:
    """Rows per slab: a multiple of every recipe's block height near ``slab_bytes`` of float32.

    0 (whole matrices) when a recipe's block spans all rows.
    """
    heights = [r.block[0] for r in recipes]
    if any(h == -1 for h in heights):
        return 0
    unit = math.lcm(*heights)
    rows = max(1, slab_bytes // (4 * max(shape[-1], 1))) // unit * unit
    return max(unit, rows)


def _sample_stride(recipe: Recipe, shape: tuple[int, ...]) -> int:
    from ue8m0.blocks import scale_grid

    blocks = math.prod(scale_grid(shape, recipe.block))
    return max(1, blocks // BLOCK_SAMPLES)


def analyze_array(
    name: str,
    chunks: Any,
    shape: tuple[int, ...],
    dtype: str,
    recipes: Sequence[Recipe],
    *,
    reference: bool = False,
    threads: int | None = None,
    on_slab: Callable[[np.ndarray], None] | None = None,
) -> TensorReport:
    """Measure one tensor given as an iterable of float32 row slabs (or one array).

    ``reference``: the numpy reference path (:meth:`RecipeStats.update`) instead of the
    compiled one; ``threads``: kernel threads (default: all); ``on_slab`` is called after each
    slab with it (progress).
    """
    stats = {r.name: RecipeStats() for r in recipes}
    strides = {r.name: _sample_stride(r, shape) for r in recipes}
    slabs = [chunks] if isinstance(chunks, np.ndarray) else chunks
    buffers = None
    for slab in slabs:
        if reference or slab.ndim != 2:
            for recipe in recipes:
                stats[recipe.name].update(slab, recipe, strides[recipe.name])
        else:
            from ue8m0.report.fused import SlabBuffers

            buffers = buffers or SlabBuffers()
            x = np.ascontiguousarray(slab, dtype=np.float32)
            for recipe in recipes:
                stats[recipe.name].update_fast(x, recipe, strides[recipe.name], buffers, threads)
        if on_slab is not None:
            on_slab(slab)
    return TensorReport(name, dtype, tuple(shape), stats)


def tensor_bytes(ref: TensorRef) -> int:
    """Bytes of ``ref`` in its file (what the progress bar counts)."""
    return math.prod(ref.shape) * np.dtype(DTYPES[ref.dtype]).itemsize


def measure_tensor(
    ref: TensorRef,
    recipes: Sequence[Recipe],
    slab_bytes: int,
    *,
    reference: bool = False,
    threads: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> TensorReport:
    """Read ``ref`` in slabs once and measure every recipe on each slab."""
    rows = slab_rows(recipes, ref.shape, slab_bytes)
    itemsize = np.dtype(DTYPES[ref.dtype]).itemsize

    def tick(slab: np.ndarray) -> None:
        if on_bytes is not None:
            on_bytes(slab.size * itemsize)

    from ue8m0.kernels import using_threads

    with using_threads(threads):  # the compiled passes' threads (the kernels take ``threads``)
        try:
            return analyze_array(
                ref.name,
                iter_slabs(ref, rows),
                ref.shape,
                ref.dtype,
                recipes,
                reference=reference,
                threads=threads,
                on_slab=tick,
            )
        except NonFiniteError as exc:  # the library's message suggests a Python argument
            raise CheckpointError(
                ref.shard, f"non-finite value {exc.value}: no recipe can measure it", ref.name
            ) from None


def analyze_checkpoint(
    src: str | Path,
    recipes: Sequence[Recipe],
    *,
    include: tuple[str, ...] = (),
    rank_by: str = "worst_row_sqnr_db",
    slab_bytes: int = DEFAULT_SLAB_BYTES,
    workers: int = 1,
    progress: ReportProgress | None = None,
    reference: bool = False,
) -> CheckpointReport:
    """Measure every float tensor of ``src`` (2-D or more) under each of ``recipes``.

    Each tensor is read once, one slab at a time, for all recipes. ``workers > 1`` measures
    tensors in that many worker processes (:mod:`.parallel`), the cores shared out as kernel
    threads; the result is the same. ``reference``: the numpy reference path (slow; tests).
    """
    refs, skipped = list_tensors(src, include)
    progress = progress or ReportProgress()
    pool = None
    if workers > 1 and len(refs) > 1:
        from ue8m0.report.parallel import TensorPool

        pool = TensorPool.start_for(src, list(recipes), min(workers, len(refs)), reference)
    sizes = [tensor_bytes(r) for r in refs]
    progress.start(sum(sizes), len(refs))
    try:
        if pool is not None:
            tensors = pool.run(measure_tensor, refs, sizes, slab_bytes, progress)
        else:
            tensors = []
            for ref in refs:
                tensors.append(
                    measure_tensor(
                        ref, recipes, slab_bytes, reference=reference, on_bytes=progress.advance
                    )
                )
                progress.tensor_done()
    except BaseException:
        if pool is not None:
            pool.kill()
        raise
    finally:
        progress.close()
    return CheckpointReport(str(src), list(recipes), tensors, skipped, rank_by)
