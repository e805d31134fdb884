"""``ue8m0 requantize SRC DST``: FP8 with FP32 (non-power-of-two) block scales -> UE8M0."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ue8m0.checkpoint.registry import DEEPSEEK, layout_names
from ue8m0.checkpoint.scales import SCALE_DTYPES
from ue8m0.cli._output import (
    echo_json,
    eps_option,
    report_option,
    run_options,
    run_or_print_plan,
    scale_search_option,
    table,
)
from ue8m0.cli.params import SOURCE
from ue8m0.policies import ScaleRule

if TYPE_CHECKING:
    from ue8m0.checkpoint.options import Fp4RepackOptions, Fp8Options

EXAMPLES = """
\b
Examples:
  ue8m0 requantize ./Qwen3-4B-FP8 ./Qwen3-4B-FP8-UE8M0 --report req
  ue8m0 requantize ./DeepSeek-V3 ./DeepSeek-V3-UE8M0 --scale-search mse --workers 8
  ue8m0 requantize SRC DST --format compressed-tensors
  ue8m0 requantize SRC DST --dry-run

\b
Reads DeepSeek (weight_scale_inv) and compressed-tensors float-quantized block (weight_scale)
checkpoints. Each block is dequantized in float32 (never through bf16) and quantized again with
the power-of-two rule (rceil: DeepSeek-V3.1 / DeepGEMM); blocks whose scale already is a power
of two are copied byte for byte, so an already-UE8M0 checkpoint comes out identical.
--scale-search mse picks, per block, the rule's exponent or the one below it (the largest
elements then saturate), whichever gives the smaller squared error; the report shows the gain.
Output: the DeepSeek-V3.1 layout (scale_fmt ue8m0) or --format compressed-tensors.
Per-tensor errors against the source's dequantized values are printed (--report PATH also
writes PATH.json and PATH.md). Rerunning into the same DST resumes.
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", type=SOURCE)
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "out_format",
    type=click.Choice(layout_names(fixed_block=False, fp4_experts=False)),
    default=DEEPSEEK.name,
    show_default=True,
    help="Output layout.",
)
@click.option(
    "--scale-rule",
    default=ScaleRule.RCEIL.value,
    show_default=True,
    type=click.Choice(ScaleRule.names(power_of_two_only=True)),
    help="Power-of-two rule for the new scales.",
)
@scale_search_option
@click.option(
    "--scale-dtype",
    type=click.Choice(["auto", *SCALE_DTYPES]),
    default="auto",
    show_default=True,
    help="Stored scale dtype (e8m0/u8: biased exponent bytes; auto: the source's when the "
    "layout can store it, else f32).",
)
@eps_option
@report_option
@click.option(
    "--not-for-serving",
    is_flag=True,
    help="The output is not for vLLM/SGLang: write options their loaders misread "
    "(U8 scales, e5m2 under quant_method fp8).",
)
@run_options
def requantize(
    src: Path,
    dst: Path,
    out_format: str,
    scale_rule: str,
    scale_search: str,
    scale_dtype: str,
    eps: float,
    not_for_serving: bool,
    report_path: Path | None,
    top: int,
    verbose: bool,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Requantize an FP8 checkpoint with FP32 block scales to power-of-two (UE8M0) scales."""
    from ue8m0.checkpoint.options import Fp8Options

    opts = Fp8Options(
        layout=out_format,
        scale_rule=scale_rule,
        scale_dtype=scale_dtype,
        eps=eps,
        scale_search=scale_search,
        not_for_serving=not_for_serving,
    ).validated()
    run_fp8_command(
        ("requantize", opts),
        src,
        dst,
        (report_path, top, verbose),
        dry_run,
        workers,
        quiet,
        as_json,
    )


def run_fp8_command(
    what: tuple[str, Fp8Options | Fp4RepackOptions],
    src: Path,
    dst: Path,
    shown: tuple[Path | None, int, bool],
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Plan, run and report ``requantize`` / ``relayout`` (``what``: the kind and its options;
    FP4 repack options plan DeepSeek-V4's FP4 -> FP8 repack)."""
    from ue8m0.checkpoint.options import Fp4RepackOptions
    from ue8m0.checkpoint.plan_fp4 import plan_fp4_repack
    from ue8m0.checkpoint.plan_fp8 import plan_fp8
    from ue8m0.checkpoint.requant_report import (
        build_report,
        report_rows,
        summary_lines,
        total_line,
        write_report,
    )
    from ue8m0.checkpoint.source import check_destination, open_checkpoint

    kind, opts = what
    report_path, top, verbose = shown
    ckpt = open_checkpoint(src)
    check_destination(src, dst)
    if isinstance(opts, Fp4RepackOptions):
        plan = plan_fp4_repack(ckpt, opts)
    else:
        plan = plan_fp8(ckpt, kind, opts)
    result = run_or_print_plan(ckpt, plan, dst, dry_run, workers, quiet, as_json, detail=True)
    if result is None:
        return
    report = build_report(plan, dst)
    written = write_report(report, report_path) if report_path is not None else None
    if as_json:
        extra = (
            {"lossy_tiles": report["total"]["lossy_tiles"]}
            if "lossy_tiles" in report["total"]
            else {}
        )
        echo_json({**result.summary(), "dst": str(dst), **extra, "report": report})
        return
    if quiet:
        return
    if verbose:
        click.echo(table(*report_rows(report)))
    else:
        headers, rows = report_rows(report, worst=top)
        for line in summary_lines(report):
            click.echo(line)
        if rows:
            click.echo(f"worst {len(rows)} of {len(report['tensors'])} (all: --verbose, --json):")
            click.echo(table(headers, rows))
    click.echo(total_line(report))
    for note in plan.notes:
        click.echo(f"note: {note}")
    if written is not None:
        click.echo(f"report: {written[0]}, {written[1]}")
