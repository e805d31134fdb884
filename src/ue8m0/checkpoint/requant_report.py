"""The report of ``requantize`` / ``relayout``: per-tensor error of the output against the
source's dequantized values (relative Frobenius, max abs, cosine, saturated and flushed
fractions), the gain of the MSE scale search over the plain rule, as JSON, markdown and text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.plan import Plan
from ue8m0.checkpoint.stats import read_stats

COLUMNS = ("rel_frobenius", "max_abs_error", "cosine", "saturated", "flushed")


def _gain(rule_err: float, err: float) -> dict[str, float]:
    """How much the search lowered the squared error: dB and fraction."""
    db = 10 * math.log10(rule_err / err) if err > 0 and rule_err > 0 else 0.0
    return {"gain_db": db, "error_reduction": 1 - err / rule_err if rule_err > 0 else 0.0}


def build_report(plan: Plan, dst: Path) -> dict[str, Any]:
    """Collect the per-shard stats of ``dst`` for ``plan`` into one report."""
    rows = read_stats(dst, [s.name for s in plan.shards])
    order = {t.name: i for i, t in enumerate(plan.tasks)}
    rows.sort(key=lambda r: order.get(r["name"], len(order)))
    search = plan.params.get("scale_search") == "mse"
    err = sum(r["err_sq"] for r in rows)
    ref = sum(r["ref_sq"] for r in rows)
    total: dict[str, Any] = {
        "tensors": len(rows),
        "rel_frobenius": math.sqrt(err / ref) if ref else 0.0,
        "sqnr_db": 10 * math.log10(ref / err) if err else math.inf,
        "max_abs_error": max((r["max_abs_error"] for r in rows), default=0.0),
        "blocks": sum(r.get("blocks", 0) for r in rows),
        "blocks_copied": sum(r.get("blocks_copied", 0) for r in rows),
    }
    if any("lossy_tiles" in r for r in rows):
        total["lossy_tiles"] = sum(r.get("lossy_tiles", 0) for r in rows)
    if search:
        for r in rows:
            r.update(_gain(r.get("rule_err_sq", 0.0), r.get("search_err_sq", 0.0)))
        rule_err = sum(r.get("rule_err_sq", 0.0) for r in rows)
        total["rule_rel_frobenius"] = math.sqrt(rule_err / ref) if ref else 0.0
        total["blocks_lowered"] = sum(r.get("blocks_lowered", 0) for r in rows)
        total.update(_gain(rule_err, sum(r.get("search_err_sq", 0.0) for r in rows)))
    lossy = [r["name"] for r in rows if r["mode"] == "requantized"]
    return {
        "command": plan.kind,
        "params": {k: v for k, v in plan.params.items() if k != "command"},
        "reference": "the source checkpoint's dequantized values (float32)",
        "total": total,
        "requantized_tensors": lossy,
        "tensors": rows,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if v and abs(v) < 1e-3 else f"{v:.6f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def report_rows(
    report: dict[str, Any], worst: int | None = None
) -> tuple[list[str], list[list[str]]]:
    """The table's headers and rows: every tensor in order, or the ``worst`` largest relative
    errors, largest first."""
    search = "gain_db" in report["total"]
    headers = ["tensor", "mode", *COLUMNS] + (["mse gain dB"] if search else [])
    tensors = report["tensors"]
    if worst is not None:
        ranked = sorted(tensors, key=lambda r: -r["rel_frobenius"])
        tensors = [r for r in ranked[:worst] if r["rel_frobenius"] > 0]
    out = []
    for r in tensors:
        row = [r["name"], r["mode"], *(_fmt(r[c]) for c in COLUMNS)]
        if search:
            row.append(f"{r['gain_db']:.4f}")
        out.append(row)
    return headers, out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Counts by mode and the spread of the per-tensor relative errors (the screen summary)."""
    rows = report["tensors"]
    modes: dict[str, int] = {}
    for r in rows:
        modes[r["mode"]] = modes.get(r["mode"], 0) + 1
    out = [", ".join(f"{n} {mode}" for mode, n in sorted(modes.items())) or "no tensors"]
    errs = sorted(r["rel_frobenius"] for r in rows)
    if errs:
        pct = {p: errs[min(len(errs) - 1, int(p / 100 * len(errs)))] for p in (50, 90, 99)}
        out.append(
            "rel. Frobenius error per tensor: "
            + ", ".join(f"p{p} {_fmt(v)}" for p, v in pct.items())
            + f", max {_fmt(errs[-1])}"
        )
    return out


def total_line(report: dict[str, Any]) -> str:
    t = report["total"]
    line = (
        f"{t['tensors']} FP8 tensors vs the source's dequantized values: rel. Frobenius error "
        f"{t['rel_frobenius']:.6f}, SQNR {t['sqnr_db']:.2f} dB, max abs error "
        f"{t['max_abs_error']:.4g}"
    )
    if "lossy_tiles" in t:
        line += f"; {t['lossy_tiles']} of {t['blocks']} tiles changed value (lossy)"
    elif report["command"] == "requantize":
        line += f"; {t['blocks_copied']}/{t['blocks']} blocks already power-of-two, copied"
    else:
        lossy = len(report["requantized_tensors"])
        line += f"; {t['tensors'] - lossy} lossless, {lossy} requantized"
    if "gain_db" in t:
        line += (
            f"; --scale-search mse lowered {t['blocks_lowered']} blocks' exponent, "
            f"{t['gain_db']:.4f} dB better than the plain rule "
            f"(rel. Frobenius {t['rule_rel_frobenius']:.6f} -> {t['rel_frobenius']:.6f}, "
            f"squared error -{100 * t['error_reduction']:.3g} %)"
        )
    return line


def render_markdown(report: dict[str, Any]) -> str:
    headers, rows = report_rows(report)
    lines = [
        f"# ue8m0 {report['command']} report",
        "",
        f"Parameters: `{json.dumps(report['params'])}`. Errors against {report['reference']}.",
        "",
        total_line(report),
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """``PATH.json`` and ``PATH.md`` (``PATH``'s own suffix replaced)."""
    base = path.with_suffix("") if path.suffix in (".json", ".md") else path
    json_path, md_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path
