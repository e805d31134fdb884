"""``ue8m0 relayout SRC DST --to mxfp8``: UE8M0 128x128 blocks -> MXFP8 1x32 groups."""

from __future__ import annotations

from pathlib import Path

import click

from ue8m0.checkpoint.options import RELAYOUT_SCALES
from ue8m0.checkpoint.registry import MXFP8, layout_names
from ue8m0.cli._output import eps_option, report_option, run_options
from ue8m0.cli.requantize import run_fp8_command

EXAMPLES = """
\b
Examples:
  ue8m0 relayout ./DeepSeek-V3.1 ./DeepSeek-V3.1-MXFP8 --to mxfp8 --workers 8
  ue8m0 relayout SRC DST --to mxfp8 --scales repeat
  ue8m0 relayout SRC DST --to mxfp8 --dry-run     # which tensors are lossless

\b
Writes 1x32 groups along the input dim: X.weight F8_E4M3 and X.weight_scale_inv U8 biased
exponents [N, ceil(K/32)], config quant_method mxfp8, weight_block_size [1, 32], scale_fmt
ue8m0 (as SGLang and miles' convert_hf_to_mxfp8 write MXFP8). Lossless where the source scales
are powers of two: by default each group gets its canonical rceil scale (identical to
ue8m0.quantize(dequantized, block=(1, 32)), checked value by value); --scales repeat copies the
element bytes and repeats each source scale byte. Tensors whose scales are not powers of two
are dequantized and requantized (lossy) and listed, with their error.
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    type=click.Choice(layout_names(fixed_block=True)),
    default=MXFP8.name,
    show_default=True,
    help="Target layout.",
)
@click.option(
    "--scales",
    type=click.Choice(list(RELAYOUT_SCALES)),
    default=RELAYOUT_SCALES[0],
    show_default=True,
    help="canonical: each group's own rceil scale; repeat: the source scale byte repeated.",
)
@eps_option
@report_option
@run_options
def relayout(
    src: Path,
    dst: Path,
    to: str,
    scales: str,
    eps: float,
    report_path: Path | None,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Relayout a UE8M0 block-scaled FP8 checkpoint to MXFP8 (lossless)."""
    from ue8m0.checkpoint.options import Fp8Options

    opts = Fp8Options(layout=to, scale_dtype="u8", eps=eps, scales=scales).validated()
    run_fp8_command("relayout", src, dst, opts, report_path, dry_run, workers, quiet, as_json)
