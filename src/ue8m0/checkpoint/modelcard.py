"""The model card (``README.md``) and ``.gitignore`` every conversion writes into DST.

The card says what was converted and how (command, layout, parameters, what was kept in high
precision and why), the error of the result where the conversion measured it, and which files
are ue8m0's bookkeeping. Those files (the resume manifest, the per-shard stats, the lock and
temporary files) are listed in ``DST/.gitignore``: ``git add`` and a Hub upload (``hf upload``,
``huggingface_hub.upload_folder``: the Hub applies an uploaded ``.gitignore``) leave them out.

Both are deterministic (no times, no paths of this machine), so a rerun, a resumed run and a run
on another executor write the same bytes. A source card is kept below ours, its YAML header
dropped (its ``license`` carried over).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path

from ue8m0.checkpoint.dstlock import LOCK_NAME
from ue8m0.checkpoint.plan import Plan
from ue8m0.checkpoint.registry import get_layout
from ue8m0.checkpoint.source import MANIFEST_NAME, Checkpoint
from ue8m0.checkpoint.srccrc import SOURCES_DIR
from ue8m0.checkpoint.stats import STATS_DIR, read_stats
from ue8m0.checkpoint.writer import TMP_SUFFIX, temp_path

CARD_NAME = "README.md"
GITIGNORE_NAME = ".gitignore"
#: ue8m0's bookkeeping in DST: never part of the model
BOOKKEEPING = (MANIFEST_NAME, f"{STATS_DIR}/", f"{SOURCES_DIR}/", LOCK_NAME, f"*{TMP_SUFFIX}")

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n?", re.S)
_OURS = "Converted by [ue8m0]"
_SOURCE_HEADING = "## The source's model card"


def gitignore_text() -> str:
    lines = ["# ue8m0's bookkeeping (resume manifest, stats, lock, temporary files)", *BOOKKEEPING]
    return "\n".join(lines) + "\n"


def _source_card(ckpt: Checkpoint) -> tuple[str | None, str]:
    """``(license, body)`` of the source's own README.md ('' when it has none)."""
    path = ckpt.root / CARD_NAME
    if CARD_NAME not in ckpt.extra_files or not path.is_file():
        return None, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    license_ = None
    found = _FRONT_MATTER.match(text)
    if found:
        for line in found.group(1).splitlines():
            if line.startswith("license:"):
                license_ = line.split(":", 1)[1].strip() or None
        text = text[found.end() :]
    if _OURS in text:  # a card ue8m0 wrote: keep only the original it carried
        _, _, text = text.partition(_SOURCE_HEADING)
    return license_, text.strip()


def _layout_title(plan: Plan) -> str:
    name = getattr(plan.options, "layout", None)
    if plan.kind == "dequantize":
        return "plain high precision (no quantization)"
    if name is None:  # relayout --to fp8: the V4 layout with FP8 experts
        return "DeepSeek-V4 with FP8 routed experts (expert_dtype fp8)"
    return get_layout(name).title


def _kept_lines(plan: Plan) -> list[str]:
    reasons = Counter(t.reason for t in plan.tasks if t.action == "copy")
    return [f"- {n} × {reason}" for reason, n in sorted(reasons.items(), key=lambda r: -r[1])]


def _error_lines(plan: Plan, dst: Path) -> list[str]:
    if not plan.options.writes_stats:
        if plan.kind == "quantize":
            return [
                "Not measured while converting. `ue8m0 verify DST --against SRC` checks every "
                "element against its format's error bound; `ue8m0 report SRC` measures each "
                "recipe per tensor.",
            ]
        return ["Exact: dequantization multiplies stored codes by their scales in float32."]
    rows = read_stats(dst, [s.name for s in plan.shards])
    err = sum(r["err_sq"] for r in rows)
    ref = sum(r["ref_sq"] for r in rows)
    if not rows:
        return ["No tensor was measured."]
    rel = math.sqrt(err / ref) if ref else 0.0
    sqnr = f"{10 * math.log10(ref / err):.2f} dB" if err else "exact (no error)"
    worst = max(rows, key=lambda r: r["rel_frobenius"])
    lines = [
        f"Against the source's dequantized values, over {len(rows)} tensors: relative "
        f"Frobenius error {rel:.6g}, SQNR {sqnr}; worst tensor `{worst['name']}` "
        f"({worst['rel_frobenius']:.6g}).",
    ]
    lossy = sum(r.get("lossy_tiles", 0) for r in rows)
    if any("lossy_tiles" in r for r in rows):
        lines.append(f"Tiles whose values changed in the FP4 -> FP8 cast: {lossy}.")
    return lines


def _loader_lines(dst: Path) -> list[str]:
    """The loader table of ``ue8m0 verify`` for the shards just written."""
    from ue8m0.checkpoint.engines import engine_table
    from ue8m0.checkpoint.source import open_checkpoint

    table = engine_table(open_checkpoint(dst))
    lines = [
        "What `ue8m0 verify --engine` says of this checkpoint (rules restating each loader; "
        "see the ue8m0 docs for which are exercised against the real engines):",
        "",
        "| engine | verdict | why |",
        "|---|---|---|",
    ]
    for engine, entry in table.items():
        findings = entry["findings"]
        assert isinstance(findings, list)
        why = "; ".join(str(f["reason"]) for f in findings) or "-"
        lines.append(f"| {engine} | {entry['verdict']} | {why} |")
    return lines


def model_card(ckpt: Checkpoint, plan: Plan, dst: Path) -> str:
    """The README.md of ``dst`` after ``plan`` ran from ``ckpt``."""
    from ue8m0 import __version__

    license_, source_card = _source_card(ckpt)
    counts = Counter(t.action for t in plan.tasks)
    front = ["---", "library_name: transformers", "tags:", "- ue8m0"]
    if plan.kind != "dequantize":
        front.append("- fp8")
    if license_:
        front.append(f"license: {license_}")
    front.append("---")
    params = json.dumps(plan.params, sort_keys=True)
    lines = [
        *front,
        "",
        f"# {ckpt.root.name}: {_layout_title(plan)}",
        "",
        f"{_OURS}(https://pypi.org/project/ue8m0/) {__version__} with "
        f"`ue8m0 {plan.kind}` from `{ckpt.root.name}`.",
        "",
        "## What was converted",
        "",
        "Tensors by step: "
        + ", ".join(f"{action} {n}" for action, n in sorted(counts.items()))
        + f"; {plan.in_bytes} bytes in, {plan.out_bytes} bytes out.",
        "",
        f"Parameters: `{params}`",
        "",
    ]
    kept = _kept_lines(plan)
    if kept:
        lines += ["Kept as they are:", "", *kept, ""]
    lines += ["## Error", "", *_error_lines(plan, dst), ""]
    lines += ["## Loaders", "", *_loader_lines(dst), ""]
    lines += [
        "## Files",
        "",
        "`ue8m0 verify` checks this checkpoint end to end (`--against` the source too). "
        "ue8m0's bookkeeping files are listed in `.gitignore`, so `git add` and a Hub upload "
        "leave them out: " + ", ".join(f"`{b}`" for b in BOOKKEEPING) + ".",
        "",
    ]
    if source_card:
        lines += [_SOURCE_HEADING, "", source_card, ""]
    return "\n".join(lines)


def write_card(ckpt: Checkpoint, plan: Plan, dst: Path) -> None:
    """``DST/README.md`` and ``DST/.gitignore``, each via a temporary file and a rename."""
    for name, text in (
        (CARD_NAME, model_card(ckpt, plan, dst)),
        (GITIGNORE_NAME, gitignore_text()),
    ):
        tmp = temp_path(dst / name)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dst / name)
