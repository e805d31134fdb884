"""``ue8m0 quantize SRC DST``: a BF16/FP16/FP32 checkpoint -> FP8 with UE8M0 block scales."""

from __future__ import annotations

from pathlib import Path

import click

from ue8m0.cli._output import (
    echo_json,
    make_progress,
    output_options,
    plan_table,
    run_summary_line,
)

EXAMPLES = """
\b
Examples:
  ue8m0 quantize ./Llama-3-8B ./Llama-3-8B-FP8
  ue8m0 quantize SRC DST --scale-rule fp32            # FP32 scales (DeepSeek-V3 layout)
  ue8m0 quantize SRC DST --scale-dtype e8m0 --workers 4
  ue8m0 quantize SRC DST --exclude 'layers\\.0\\.' --dry-run
  ue8m0 quantize SRC DST --include 'lm_head' --include 'proj'

\b
Output (DeepSeek-V3.1 layout, loaded by transformers, vLLM and SGLang): X.weight F8_E4M3 and
X.weight_scale_inv (the dequant multiplier, ceil(out/128) x ceil(in/128)), F32 exact powers of
two by default; config.json gains quantization_config (quant_method fp8, scale_fmt ue8m0).
Kept in high precision: embeddings, lm_head, norms, MoE routers, biases, tensors that are not
2-D or 3-D, and weights whose dims are not multiples of the block. --pad-partial converts
those too with a zero-padded block grid (DeepSeek's convention, read by vLLM and SGLang);
transformers refuses such weights ("not divisible by scale grid").
Rerunning into the same DST resumes; other parameters are refused.
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--fmt",
    type=click.Choice(["e4m3", "e5m2"]),
    default="e4m3",
    show_default=True,
    help="FP8 element format.",
)
@click.option("--block", default="128x128", show_default=True, help="Block shape ROWSxCOLS.")
@click.option(
    "--scale-rule",
    default="rceil",
    show_default=True,
    type=click.Choice(["rceil", "log2", "floor", "ceil", "even", "fp32"]),
    help="How a block's scale is chosen; fp32 = amax/max, not a power of two.",
)
@click.option(
    "--scale-dtype",
    type=click.Choice(["f32", "e8m0", "u8"]),
    default="f32",
    show_default=True,
    help="Stored scale dtype (e8m0/u8: biased exponent bytes).",
)
@click.option(
    "--eps",
    type=float,
    default=1e-4,
    show_default=True,
    help="Lower bound on a block's amax (DeepSeek/DeepGEMM use 1e-4).",
)
@click.option(
    "--nonfinite",
    type=click.Choice(["raise", "propagate"]),
    default="raise",
    show_default=True,
    help="NaN/Inf weights: fail naming tensor and block, or keep them as NaN blocks.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="REGEX",
    help="Convert only tensors matching (repeatable); overrides the default keep list.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="REGEX",
    help="Keep tensors matching in high precision (repeatable).",
)
@click.option(
    "--pad-partial",
    is_flag=True,
    help="Also convert weights whose dims are not multiples of the block.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, bytes, shards) only.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes over shards (threads within a shard when fewer shards).",
)
@output_options
def quantize(
    src: Path,
    dst: Path,
    fmt: str,
    block: str,
    scale_rule: str,
    scale_dtype: str,
    eps: float,
    nonfinite: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    pad_partial: bool,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize a safetensors checkpoint to FP8 with UE8M0 (or FP32) 128x128 block scales."""
    from ue8m0.checkpoint.plan import QuantizeOptions, plan_quantize
    from ue8m0.checkpoint.runner import run_plan
    from ue8m0.checkpoint.source import check_destination, open_checkpoint

    opts = QuantizeOptions(
        fmt,
        block,  # type: ignore[arg-type]  # parsed by validated()
        scale_rule,
        scale_dtype,
        eps,
        nonfinite,
        include,
        exclude,
        pad_partial,
    ).validated()
    ckpt = open_checkpoint(src)
    check_destination(src, dst)
    plan = plan_quantize(ckpt, opts)
    if dry_run:
        if as_json:
            echo_json(
                {
                    **plan.summary(),
                    "tensors_detail": [
                        {"name": t.name, "action": t.action, "reason": t.reason} for t in plan.tasks
                    ],
                }
            )
        elif not quiet:
            click.echo(plan_table(plan))
        return
    result = run_plan(ckpt, plan, dst, workers, make_progress(quiet, as_json))
    if as_json:
        echo_json({**result.summary(), "dst": str(dst)})
    elif not quiet:
        click.echo(run_summary_line(result.summary(), dst))
