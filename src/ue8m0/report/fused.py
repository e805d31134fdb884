"""The report's fast path: one compiled pass over each slab and recipe for every sum the report
keeps, in place of the float64 numpy temporaries of the reference path.

For a slab ``x`` (float32, 2-D) and a recipe, :func:`measure_slab` quantizes with the public fast
kernels into reused buffers (``ue8m0.quantize(..., out=)``, the MSE scale search by
:func:`ue8m0.kernels.refine_mse`), dequantizes into a reused float32 buffer
(``ue8m0.dequantize(..., out=)``), then :func:`slab_sums_kernel` reads ``x`` and ``y`` once and
returns, in float64 scalars accumulated element by element:

- per row: ``Σx²``, ``Σe²``, ``Σy²``, ``Σxy``, ``max |e|`` and the counts of non-zero, flushed
  (``x != 0`` and ``y == 0``) and saturated (``|x| > limit · scale``) elements;
- per block: ``Σe²``, ``Σx²`` (the scatter plot's relative error) and ``max |x|`` (headroom).

Every element's term is the reference's own (``float64(y) - float64(x)`` and its square are the
same numbers); only the order of the additions differs, so the sums agree with the reference
path (:meth:`ue8m0.report.analysis.RecipeStats.update`) to a few float64 ulps per addition
(``tests/test_report_fast.py`` holds them to 1e-12 relative), and counts, ``max |e|``, block
``max |x|``, headroom and scale exponents are equal exactly, save for the MSE recipes' near-ties
(:mod:`ue8m0.kernels._mse`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from ue8m0.api import QuantizedTensor, dequantize, quantize
from ue8m0.blocks import resolve_block, scale_grid
from ue8m0.metrics import saturation_limit
from ue8m0.policies import ScaleSearch
from ue8m0.recipes import Recipe

#: columns of the per-row float64 sums
ROW_REF, ROW_ERR, ROW_APPROX, ROW_DOT, ROW_MAXABS = range(5)
#: columns of the per-row counts
CNT_NONZERO, CNT_FLUSHED, CNT_SATURATED = range(3)


@njit(parallel=True, cache=True)
def slab_sums_kernel(
    x: Any,
    y: Any,
    scale: Any,
    br: int,
    bc: int,
    satlim: float,
    rows: Any,
    counts: Any,
    blk: Any,
    blk_amax: Any,
) -> None:
    """Fill ``rows`` (R, 5) float64, ``counts`` (R, 3) int64, ``blk`` (GR, GC, 2) float64 (block
    ``Σe²``, ``Σx²``) and ``blk_amax`` (GR, GC) float32 from ``x`` and ``y`` (R, C) float32 and
    the block ``scale`` (GR, GC) float32; blocks ``br`` x ``bc``. One task per block row."""
    nrows, ncols = x.shape
    gr, gc = scale.shape
    for i in prange(gr):
        r0 = i * br
        r1 = min(nrows, r0 + br)
        for j in range(gc):
            blk[i, j, 0] = 0.0
            blk[i, j, 1] = 0.0
            blk_amax[i, j] = np.float32(0.0)
        for r in range(r0, r1):
            ref = 0.0
            err = 0.0
            app = 0.0
            dot = 0.0
            top = 0.0
            nz = 0
            fl = 0
            sat = 0
            for j in range(gc):
                c0 = j * bc
                c1 = min(ncols, c0 + bc)
                limit = satlim * np.float64(scale[i, j])
                berr = 0.0
                bref = 0.0
                bmax = np.float32(0.0)
                for c in range(c0, c1):
                    xf = x[r, c]
                    xv = np.float64(xf)
                    yv = np.float64(y[r, c])
                    e = yv - xv
                    xx = xv * xv
                    ee = e * e
                    bref += xx
                    berr += ee
                    app += yv * yv
                    dot += xv * yv
                    top = max(top, abs(e))
                    ax = abs(xf)
                    bmax = max(bmax, ax)
                    if xf != 0:
                        nz += 1
                        if yv == 0:
                            fl += 1
                    if np.float64(ax) > limit:
                        sat += 1
                ref += bref
                err += berr
                blk[i, j, 0] += berr
                blk[i, j, 1] += bref
                blk_amax[i, j] = max(blk_amax[i, j], bmax)
            rows[r, ROW_REF] = ref
            rows[r, ROW_ERR] = err
            rows[r, ROW_APPROX] = app
            rows[r, ROW_DOT] = dot
            rows[r, ROW_MAXABS] = top
            counts[r, CNT_NONZERO] = nz
            counts[r, CNT_FLUSHED] = fl
            counts[r, CNT_SATURATED] = sat


class SlabBuffers:
    """Output buffers reused across recipes and slabs of one shape (codes, dequantized values,
    the per-row and per-block sums)."""

    def __init__(self) -> None:
        self._shape: tuple[int, ...] = ()
        self.codes = np.zeros(0, np.uint8)
        self.y = np.zeros(0, np.float32)
        self.rows = np.zeros((0, 5))
        self.counts = np.zeros((0, 3), np.int64)

    def fit(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            self._shape = shape
            self.codes = np.empty(shape, np.uint8)
            self.y = np.empty(shape, np.float32)
            self.rows = np.empty((shape[0], 5))
            self.counts = np.empty((shape[0], 3), np.int64)


def quantize_into(x: np.ndarray, recipe: Recipe, codes: np.ndarray, threads: int | None) -> Any:
    """``recipe.quantize(x)`` with its codes in ``codes`` (the same bytes, scales and scale
    bytes as :meth:`Recipe.quantize`; the MSE search compiled)."""
    from ue8m0.kernels import refine_mse

    q = quantize(
        x, recipe.block, recipe.fmt, recipe.scale_rule, recipe.eps, out=codes, threads=threads
    )
    if recipe.scale_search is ScaleSearch.MSE:
        assert q.scale_codes is not None
        scale = refine_mse(x, q.block, q.fmt, codes, q.scale_codes)
        q = QuantizedTensor(q.data, scale, q.scale_codes, q.fmt, q.block, q.scale_rule)
    return q


def measure_slab(
    x: np.ndarray, recipe: Recipe, buffers: SlabBuffers, threads: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Quantize and dequantize the 2-D float32 slab ``x`` with ``recipe``; returns the
    quantized tensor and the slab's sums (see the module docstring)."""
    buffers.fit(x.shape)
    q = quantize_into(x, recipe, buffers.codes, threads)
    y = dequantize(q, np.float32, out=buffers.y, threads=threads)
    br, bc = resolve_block(q.block, x.shape)
    grid = scale_grid(x.shape, q.block)
    blk = np.empty((*grid, 2))
    blk_amax = np.empty(grid, np.float32)
    satlim = saturation_limit(q.fmt)
    slab_sums_kernel(x, y, q.scale, br, bc, satlim, buffers.rows, buffers.counts, blk, blk_amax)
    rows, counts = buffers.rows, buffers.counts.sum(axis=0)
    sums = {
        "count": x.size,
        "nonzero": int(counts[CNT_NONZERO]),
        "flushed": int(counts[CNT_FLUSHED]),
        "saturated": int(counts[CNT_SATURATED]),
        "row_ref": rows[:, ROW_REF].copy(),
        "row_err": rows[:, ROW_ERR].copy(),
        "approx_sq": float(rows[:, ROW_APPROX].sum()),
        "dot": float(rows[:, ROW_DOT].sum()),
        "max_abs": float(rows[:, ROW_MAXABS].max()) if x.size else 0.0,
    }
    return q, {"errors": sums, "block_err": blk[..., 0], "block_ref": blk[..., 1], "amax": blk_amax}


def scale_exponents(scale: np.ndarray) -> dict[int, int]:
    """``{floor(log2 s): count}`` over the positive finite scales (frexp: exact)."""
    s = scale[np.isfinite(scale) & (scale > 0)]
    if not s.size:
        return {}
    exps = np.frexp(s)[1].astype(np.int64) - 1
    low = int(exps.min())
    counts = np.bincount(exps - low)
    return {low + int(k): int(c) for k, c in enumerate(counts) if c}


def warm_up(recipes: list[Recipe]) -> None:
    """Compile (or load from the disk cache) what :func:`measure_slab` calls for ``recipes``,
    on a tiny slab (forked workers inherit them; spawned ones find the cache written)."""
    buffers = SlabBuffers()
    for recipe in recipes:
        br, bc = (max(1, b) for b in recipe.block)
        x = np.linspace(-1.0, 1.0, 4 * br * bc, dtype=np.float32).reshape(2 * br, 2 * bc)
        measure_slab(x, recipe, buffers)
