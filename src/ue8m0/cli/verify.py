"""``ue8m0 verify CKPT [--against SRC]``: check a converted checkpoint end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ue8m0.cli._output import echo_json, output_options, table
from ue8m0.cli.params import SOURCE

EXAMPLES = """
\b
Examples:
  ue8m0 verify ./Llama-3-8B-FP8
  ue8m0 verify ./Llama-3-8B-FP8 --against ./Llama-3-8B
  ue8m0 verify ./DeepSeek-V3.1 --json

\b
Checks: index <-> shards complete and consistent (total_size too); every FP8 weight has a
scale of the right shape and dtype; no orphan scales; config.json <-> tensors; scale_fmt ue8m0
=> every scale an exact power of two (lists the tensors where not); no NaN/Inf; with
--against, every dequantized element within half an FP8 ulp (times its block scale) of the
source (an FP8 source: its dequantized values), and every high-precision tensor identical.
Exit status 1 when any check fails.
"""


@click.command(epilog=EXAMPLES)
@click.argument("ckpt", type=SOURCE)
@click.option(
    "--against",
    type=SOURCE,
    help="The source (high-precision or FP8) to compare dequantized weights with.",
)
@output_options
def verify(ckpt: Path, against: Path | None, quiet: bool, as_json: bool) -> None:
    """Verify an FP8 (or any safetensors) checkpoint; non-zero exit on any failure."""
    from ue8m0.checkpoint.verify import verify_checkpoint

    report = verify_checkpoint(ckpt, against)
    if as_json:
        echo_json(report.as_dict())
    elif not quiet:
        rows = [(c.name, "ok" if c.passed else "FAIL", c.detail) for c in report.checks]
        click.echo(table(("check", "result", "detail"), rows))
        for c in report.checks:
            for line in c.tensors:
                click.echo(f"  FAIL {c.name}: {line}")
        click.echo(f"{ckpt}: {'all checks passed' if report.passed else 'FAILED'}")
    if not report.passed:
        sys.exit(1)  # click's Exit is swallowed under standalone_mode=False
