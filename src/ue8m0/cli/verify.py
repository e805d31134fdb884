"""``ue8m0 verify CKPT [--against SRC]``: check a converted checkpoint end to end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ue8m0.checkpoint.engines import ENGINES
from ue8m0.cli._output import echo_json, output_options, table
from ue8m0.cli.params import SOURCE
from ue8m0.printable import printable

EXAMPLES = """
\b
Examples:
  ue8m0 verify ./Llama-3-8B-FP8
  ue8m0 verify ./Llama-3-8B-FP8 --against ./Llama-3-8B
  ue8m0 verify ./DeepSeek-V3.1 --json

\b
Checks: index <-> shards complete and consistent (total_size too; a shard with trailing bytes
after its data fails here, and, with a ue8m0 manifest in CKPT, a shard whose size or CRC-32
differs from what was written: a flipped byte fails); every FP8 weight has a
scale of the right shape and dtype; no orphan scales; config.json <-> tensors; scale_fmt ue8m0
=> every scale an exact power of two (lists the tensors where not); no NaN/Inf; with
--against, every dequantized element within half an FP8 ulp (times its block scale) of the
source (an FP8 source: its dequantized values), and every high-precision tensor identical.
The loader table says, for vLLM, SGLang, transformers and DeepSeek's own code, whether
each loads the checkpoint, refuses it (the loader's reason) or silently misreads it (fused
layers split between FP8 and BF16, partial scale grids where a loader cannot read them, U8 scale
bytes where float32 scales are expected, F8_E8M0 scales for DeepSeek-V3's converter, e5m2 under
quant_method fp8, MXFP8 scales under the name another engine reads (vLLM: weight_scale;
SGLang, transformers: weight_scale_inv), an MoE layer whose experts are split between FP8 and
BF16 or kept without naming the experts module (transformers v5 loads them as one module), a
DeepSeek-V4 checkpoint without expert_dtype, scale values that look like exponent bytes copied
as numbers).
Exit status 1 when any check fails, or an engine named with --engine would not load it.
"""


@click.command(epilog=EXAMPLES)
@click.argument("ckpt", type=SOURCE)
@click.option(
    "--against",
    type=SOURCE,
    help="The source (high-precision or FP8) to compare dequantized weights with.",
)
@click.option(
    "--engine",
    "engines",
    multiple=True,
    type=click.Choice(list(ENGINES)),
    help="Fail unless this engine loads the checkpoint as its values say (repeatable); the "
    "loader table covers every engine either way.",
)
@output_options
def verify(
    ckpt: Path, against: Path | None, engines: tuple[str, ...], quiet: bool, as_json: bool
) -> None:
    """Verify an FP8 (or any safetensors) checkpoint; non-zero exit on any failure."""
    from ue8m0.checkpoint.engines import engine_table
    from ue8m0.checkpoint.verify import verify_checkpoint

    report = verify_checkpoint(ckpt, against)
    loaders = engine_table(report.checkpoint) if report.checkpoint is not None else {}
    failed = [e for e in engines if loaders.get(e, {}).get("verdict", "loads") != "loads"]
    passed = report.passed and not failed
    if as_json:
        echo_json({**report.as_dict(), "passed": passed, "engines": loaders})
    elif not quiet:
        rows = [(c.name, "ok" if c.passed else "FAIL", c.detail) for c in report.checks]
        click.echo(table(("check", "result", "detail"), rows))
        for c in report.checks:
            for line in c.tensors:
                click.echo(f"  FAIL {c.name}: {printable(line)}")
        if loaders:
            click.echo("\n" + table(("engine", "loader", "why"), _engine_rows(loaders)))
        click.echo(f"{printable(str(ckpt))}: {'all checks passed' if passed else 'FAILED'}")
    if not passed:
        sys.exit(1)  # click's Exit is swallowed under standalone_mode=False


def _engine_rows(loaders: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for engine, entry in loaders.items():
        findings = entry["findings"] or [{"verdict": "loads", "reason": "", "tensors": []}]
        for f in findings:
            named = f" ({', '.join(f['tensors'])})" if f["tensors"] else ""
            rows.append((engine, f["verdict"], f["reason"] + named))
    return rows
