"""The report as one self-contained HTML page next to its PNG plots."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ue8m0.report.analysis import CheckpointReport
from ue8m0.report.outdir import write_text_atomic
from ue8m0.report.text import SUMMARY_COLUMNS

_CAPTIONS = {
    "error_by_layer": "SQNR and worst-row SQNR per layer, by recipe (higher is better).",
    "headroom": "Headroom per block: bits of the element range the scale leaves unused. "
    "rceil lies in [0, 1), fp32 at 0, floor below 0 where elements saturate.",
    "scale_exponents": "Distribution of the scale exponents over all blocks.",
    "block_scatter": "Per-block relative error with power-of-two scales against fp32 scales "
    "(same format and block); points above the diagonal are blocks UE8M0 makes worse.",
}

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
"""


def _cell(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _summary(report: CheckpointReport) -> list[str]:
    totals = report.totals()
    out = [
        "<table>",
        _row(["recipe", "label", *(c[0] for c in SUMMARY_COLUMNS), "mean headroom (bits)"], "th"),
    ]
    for recipe in report.recipes:
        values = totals[recipe.name].errors.result()
        headroom = totals[recipe.name].headroom.result()["mean_bits"]
        cells = [_cell(values[key], spec) for _, key, spec in SUMMARY_COLUMNS]
        out.append(_row([recipe.name, recipe.label, *cells, _cell(headroom, ".3f")]))
    return [*out, "</table>"]


def _tensors(report: CheckpointReport) -> list[str]:
    names = [r.name for r in report.recipes]
    header = ["tensor", "shape"]
    for n in names:
        header += [f"{n} SQNR dB", f"{n} worst row dB"]
    out = ["<table>", _row(header, "th")]
    for t in report.ranked():
        cells = [t.name, "x".join(str(d) for d in t.shape)]
        for n in names:
            r = t.recipes[n].errors.result()
            cells += [_cell(r["sqnr_db"], ".2f"), _cell(r["worst_row_sqnr_db"], ".2f")]
        out.append(_row(cells))
    return [*out, "</table>"]


def write_html(report: CheckpointReport, plots: dict[str, Path], path: Path) -> Path:
    """Write ``path`` (index.html) referring to ``plots`` by their file names."""
    title = f"ue8m0 report: {report.source}"
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(report.tensors)} tensors measured, {len(report.skipped)} skipped. "
        "SQNR = 10 log10(&Sigma;x&sup2; / &Sigma;(q(x) - x)&sup2;); worst row = the lowest SQNR "
        "of one row (output channel); saturated = share of elements clipped to the format's "
        "max; flushed = share of non-zero elements that became 0.</p>",
        "<h2>Recipes over the whole checkpoint</h2>",
        *_summary(report),
    ]
    for key, plot in plots.items():
        parts += [
            f'<figure><img src="{html.escape(plot.name)}" alt="{html.escape(key)}">',
            f"<figcaption>{html.escape(_CAPTIONS.get(key, key))}</figcaption></figure>",
        ]
    parts += [
        f"<h2>Tensors, worst first by {html.escape(report.rank_by)} under "
        f"{html.escape(report.recipes[0].name)}</h2>",
        *_tensors(report),
    ]
    if report.skipped:
        parts += ["<h2>Skipped</h2>", "<table>", _row(["tensor", "reason"], "th")]
        parts += [_row([n, r]) for n, r in report.skipped.items()] + ["</table>"]
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts) + "\n")  # a link planted meanwhile: replaced
    return path
