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
from ue8m0.metrics import ErrorStats, block_reduce, headroom_bits, saturated_mask
from ue8m0.recipes import Recipe
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
        """Quantize the slab ``x`` with ``recipe`` and add what it cost."""
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
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.sqrt(err_sq / ref_sq)
        self.block_errors.append(rel[::sample_stride].astype(np.float32))

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
    name: str, chunks: Any, shape: tuple[int, ...], dtype: str, recipes: Sequence[Recipe]
) -> TensorReport:
    """Measure one tensor given as an iterable of float32 row slabs (or one array)."""
    stats = {r.name: RecipeStats() for r in recipes}
    strides = {r.name: _sample_stride(r, shape) for r in recipes}
    slabs = [chunks] if isinstance(chunks, np.ndarray) else chunks
    for slab in slabs:
        for recipe in recipes:
            stats[recipe.name].update(slab, recipe, strides[recipe.name])
    return TensorReport(name, dtype, tuple(shape), stats)


def analyze_checkpoint(
    src: str | Path,
    recipes: Sequence[Recipe],
    *,
    include: tuple[str, ...] = (),
    rank_by: str = "worst_row_sqnr_db",
    slab_bytes: int = DEFAULT_SLAB_BYTES,
    progress: Callable[[TensorRef], None] | None = None,
) -> CheckpointReport:
    """Measure every float tensor of ``src`` (2-D or more) under each of ``recipes``."""
    refs, skipped = list_tensors(src, include)
    tensors = []
    for ref in refs:
        if progress is not None:
            progress(ref)
        rows = slab_rows(recipes, ref.shape, slab_bytes)
        tensors.append(
            analyze_array(ref.name, iter_slabs(ref, rows), ref.shape, ref.dtype, recipes)
        )
    return CheckpointReport(str(src), list(recipes), tensors, skipped, rank_by)
