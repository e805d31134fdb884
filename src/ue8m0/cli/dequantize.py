"""``ue8m0 dequantize SRC DST``: any FP8 block checkpoint -> BF16 (or F32)."""

from __future__ import annotations

from pathlib import Path

import click

from ue8m0.checkpoint.options import DEQUANT_DTYPES
from ue8m0.cli._output import echo_json, run_options, run_or_print_plan
from ue8m0.cli.params import SOURCE

EXAMPLES = """
\b
Examples:
  ue8m0 dequantize ./DeepSeek-V3.1 ./DeepSeek-V3.1-BF16 --workers 8
  ue8m0 dequantize ./Qwen3-4B-FP8 ./Qwen3-4B-BF16 --dry-run
  ue8m0 dequantize SRC DST --dtype f32 --json

\b
Reads F8_E4M3/F8_E5M2 weights with scales named weight_scale_inv (DeepSeek), weight_scale
(compressed-tensors) or scale (DeepSeek-V4), stored as F32, BF16, F16, U8 (biased exponent) or
F8_E8M0, in any shard; partial blocks, MXFP8 1x32 groups and 3-D experts. Exact for
power-of-two scales.
Removes quantization_config, writes format: pt metadata and a recomputed total_size.
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", type=SOURCE)
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(list(DEQUANT_DTYPES)),
    default="bf16",
    show_default=True,
    help="Output dtype of the dequantized weights.",
)
@run_options
def dequantize(
    src: Path, dst: Path, dtype: str, dry_run: bool, workers: int, quiet: bool, as_json: bool
) -> None:
    """Dequantize an FP8 block-scaled checkpoint to a plain BF16 checkpoint."""
    from ue8m0.checkpoint.options import DequantizeOptions
    from ue8m0.checkpoint.plan_dequantize import plan_dequantize
    from ue8m0.checkpoint.source import check_destination, open_checkpoint

    ckpt = open_checkpoint(src)
    check_destination(src, dst)
    plan = plan_dequantize(ckpt, DequantizeOptions(dtype))
    result = run_or_print_plan(ckpt, plan, dst, dry_run, workers, quiet, as_json)
    if result is not None and as_json:
        echo_json({**result.summary(), "dst": str(dst)})
