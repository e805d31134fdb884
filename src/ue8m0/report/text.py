"""The report as a terminal table and as a JSON document (strict JSON: non-finite as strings).

Every name and path of the terminal report goes through :func:`ue8m0.printable.printable`: a
tensor named with a newline or an ESC sequence prints escaped, on its own line."""

from __future__ import annotations

import math
from typing import Any

from ue8m0.printable import printable
from ue8m0.recipes import Recipe
from ue8m0.report.analysis import HEADROOM_EDGES, CheckpointReport


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def recipe_info(recipe: Recipe) -> dict[str, Any]:
    """The parameters of a recipe as plain values."""
    return {
        "label": recipe.label,
        "fmt": recipe.fmt.name,
        "block": list(recipe.block),
        "scale_rule": recipe.scale_rule.value,
        "eps": recipe.eps,
    }


def report_json(report: CheckpointReport) -> dict[str, Any]:
    """The whole report: per-recipe totals, tensors worst first, skipped tensors."""
    totals = report.totals()
    recipes = {}
    for recipe in report.recipes:
        summary = totals[recipe.name].result()
        hist = totals[recipe.name].headroom
        summary["headroom"]["histogram"] = {
            "edges": [float(e) for e in HEADROOM_EDGES],
            "counts": hist.counts.tolist(),
        }
        recipes[recipe.name] = {**recipe_info(recipe), "summary": summary}
    tensors = [
        {
            "name": t.name,
            "dtype": t.dtype,
            "shape": list(t.shape),
            "layer": t.layer,
            "recipes": {
                name: {**s.errors.result(), "headroom": s.headroom.result()}
                for name, s in t.recipes.items()
            },
        }
        for t in report.ranked()
    ]
    return finite_json(
        {
            "source": report.source,
            "rank_by": {"metric": report.rank_by, "recipe": report.recipes[0].name},
            "recipes": recipes,
            "tensors": tensors,
            "skipped": report.skipped,
        }
    )


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


SUMMARY_COLUMNS = (
    ("SQNR dB", "sqnr_db", ".2f"),
    ("WORST ROW dB", "worst_row_sqnr_db", ".2f"),
    ("REL FROB", "rel_frobenius", ".5f"),
    ("COSINE", "cosine", ".6f"),
    ("MAX ABS", "max_abs_error", ".3e"),
    ("SATURATED", "saturated", ".2e"),
    ("FLUSHED", "flushed", ".2e"),
)


def summary_table(report: CheckpointReport) -> list[str]:
    """One line per recipe: its metrics over the whole checkpoint."""
    totals = report.totals()
    head = f"{'RECIPE':<10}{'LABEL':<20}" + "".join(f"{c[0]:>14}" for c in SUMMARY_COLUMNS)
    lines = [head + f"{'HEADROOM b':>12}"]
    for recipe in report.recipes:
        stats = totals[recipe.name]
        values = stats.errors.result()
        cells = "".join(f"{_fmt(values[key], spec):>14}" for _, key, spec in SUMMARY_COLUMNS)
        headroom = stats.headroom.result()["mean_bits"]
        lines.append(f"{recipe.name:<10}{recipe.label:<20}{cells}{_fmt(headroom, '.3f'):>12}")
    return lines


def worst_table(report: CheckpointReport, top: int) -> list[str]:
    """The ``top`` worst tensors: the ranking metric under every recipe."""
    metric = report.rank_by
    names = [r.name for r in report.recipes]
    ranked = report.ranked()[:top]
    width = max([len("TENSOR"), *(len(printable(t.name)) for t in ranked)]) + 2
    lines = [
        f"worst {len(ranked)} of {len(report.tensors)} tensors by {metric} under {names[0]}:",
        f"{'TENSOR':<{width}}{'SHAPE':<18}" + "".join(f"{n:>12}" for n in names),
    ]
    for t in ranked:
        shape = "x".join(str(d) for d in t.shape)
        cells = "".join(f"{_fmt(t.recipes[n].errors.result()[metric], '.3g'):>12}" for n in names)
        lines.append(f"{printable(t.name):<{width}}{shape:<18}{cells}")
    return lines


def terminal_report(report: CheckpointReport, top: int = 10) -> str:
    """The text ``ue8m0 report`` prints."""
    lines = [
        f"{printable(str(report.source))}: {len(report.tensors)} tensors measured, "
        f"{len(report.skipped)} skipped",
        "",
        *summary_table(report),
    ]
    if report.tensors:
        lines += ["", *worst_table(report, top)]
    reasons: dict[str, int] = {}
    for reason in report.skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        lines += ["", "skipped:"] + [f"  {n} x {printable(r)}" for r, n in sorted(reasons.items())]
    return "\n".join(lines)
