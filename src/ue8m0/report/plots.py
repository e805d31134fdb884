"""The report's PNG plots (matplotlib, the ``plot`` extra, imported only here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.extras import figure
from ue8m0.recipes import Recipe
from ue8m0.report.analysis import HEADROOM_EDGES, CheckpointReport

#: file names of the plots, in the order the HTML shows them
PLOTS = {
    "error_by_layer": "error_by_layer.png",
    "headroom": "headroom.png",
    "scale_exponents": "scale_exponents.png",
    "block_scatter": "block_error_scatter.png",
}


def _finite(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def plot_error_by_layer(report: CheckpointReport, path: Path) -> None:
    """SQNR and worst-row SQNR per layer (or per tensor when names carry no layer), by recipe."""
    fig: Any = figure(9, 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    layers = report.by_layer()
    for recipe in report.recipes:
        if layers:
            xs = list(layers)
            rows = [layers[k][recipe.name].result() for k in xs]
        else:
            xs = list(range(len(report.tensors)))
            rows = [t.recipes[recipe.name].errors.result() for t in report.tensors]
        top.plot(xs, _finite([r["sqnr_db"] for r in rows]), marker=".", label=recipe.name)
        bottom.plot(xs, _finite([r["worst_row_sqnr_db"] for r in rows]), marker=".")
    top.set_ylabel("SQNR (dB)")
    bottom.set_ylabel("worst row SQNR (dB)")
    bottom.set_xlabel("layer" if layers else "tensor (checkpoint order)")
    top.set_title(f"Quantization error by {'layer' if layers else 'tensor'} (higher is better)")
    top.legend(fontsize="small", ncol=3)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_headroom(report: CheckpointReport, path: Path) -> None:
    """Share of blocks by headroom ``log2(elem_max · scale / amax)``, one line per recipe."""
    fig: Any = figure()
    ax = fig.subplots()
    totals = report.totals()
    for recipe in report.recipes:
        counts = totals[recipe.name].headroom.counts
        if counts.sum():
            share = np.r_[counts / counts.sum(), 0.0]
            ax.step(HEADROOM_EDGES, share, where="post", label=recipe.name)
    ax.set_xlabel("block headroom: log2(elem_max x scale / amax) (bits of element range unused)")
    ax.set_ylabel("share of blocks")
    ax.set_xlim(-1.5, 3)
    ax.set_title("Headroom per block")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_scale_exponents(report: CheckpointReport, path: Path) -> None:
    """Histogram of ``floor(log2(scale))`` over all blocks, one line per recipe."""
    fig: Any = figure()
    ax = fig.subplots()
    totals = report.totals()
    for recipe in report.recipes:
        found = totals[recipe.name].exponents
        if found:
            exps = np.arange(min(found), max(found) + 1)
            total = sum(found.values())
            ax.plot(
                exps, [found.get(int(e), 0) / total for e in exps], marker=".", label=recipe.name
            )
    ax.set_xlabel("scale exponent floor(log2 scale) (UE8M0 byte - 127)")
    ax.set_ylabel("share of blocks")
    ax.set_title("Scale exponents")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def scatter_pairs(recipes: list[Recipe]) -> list[tuple[Recipe, Recipe]]:
    """(power-of-two recipe, fp32-scale recipe) pairs with the same format and block."""
    fp32 = {(r.fmt, r.block): r for r in recipes if not r.scale_rule.is_power_of_two}
    return [
        (r, fp32[(r.fmt, r.block)])
        for r in recipes
        if r.scale_rule.is_power_of_two and (r.fmt, r.block) in fp32
    ]


def plot_block_scatter(report: CheckpointReport, path: Path) -> bool:
    """Per-block relative error, power-of-two scale vs fp32 scale; False when no pair exists."""
    pairs = scatter_pairs(report.recipes)
    if not pairs:
        return False
    fig: Any = figure(6.5, 6)
    ax = fig.subplots()
    totals = report.totals()
    low, high = math.inf, 0.0
    for pow2, fp32 in pairs:
        x = totals[fp32.name].block_error_samples()
        y = totals[pow2.name].block_error_samples()
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        if keep.any():
            low, high = (
                min(low, x[keep].min(), y[keep].min()),
                max(high, x[keep].max(), y[keep].max()),
            )
            ax.scatter(x[keep], y[keep], s=3, alpha=0.4, label=f"{pow2.name} vs {fp32.name}")
    if high > 0:
        ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="equal error")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("block relative error, fp32 scale")
    ax.set_ylabel("block relative error, power-of-two (UE8M0) scale")
    ax.set_title("Per-block error: UE8M0 vs FP32 scales")
    ax.legend(fontsize="small", markerscale=4)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return True


def write_plots(report: CheckpointReport, out: Path) -> dict[str, Path]:
    """Write every plot that applies under ``out``; returns ``{plot key: path}``."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key, draw in (
        ("error_by_layer", plot_error_by_layer),
        ("headroom", plot_headroom),
        ("scale_exponents", plot_scale_exponents),
    ):
        draw(report, out / PLOTS[key])
        written[key] = out / PLOTS[key]
    if plot_block_scatter(report, out / PLOTS["block_scatter"]):
        written["block_scatter"] = out / PLOTS["block_scatter"]
    return written
