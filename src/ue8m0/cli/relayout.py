"""``ue8m0 relayout SRC DST --to mxfp8``: UE8M0 128x128 blocks -> MXFP8 1x32 groups."""

from __future__ import annotations

from pathlib import Path

import click

from ue8m0.checkpoint.options import RELAYOUT_SCALES
from ue8m0.checkpoint.registry import DEEPSEEK_V4, MXFP8, layout_for, layout_names
from ue8m0.cli._output import engine_option, eps_option, report_option, run_options
from ue8m0.cli.params import SOURCE
from ue8m0.cli.requantize import run_fp8_command

EXAMPLES = """
\b
Examples:
  ue8m0 relayout ./DeepSeek-V3.1 ./DeepSeek-V3.1-MXFP8 --to mxfp8 --workers 8
  ue8m0 relayout SRC DST --to mxfp8 --scales repeat
  ue8m0 relayout SRC DST --to mxfp8 --engine sglang  # weight_scale_inv (SGLang, transformers)
  ue8m0 relayout SRC DST --to mxfp8 --dry-run     # which tensors are lossless
  ue8m0 relayout ./DeepSeek-V4-Flash ./DeepSeek-V4-Flash-FP8 --to fp8 --workers 2
  ue8m0 relayout SRC DST --to fp8 --strict --json # refuse if any tile would change

\b
Writes 1x32 groups along the input dim: X.weight F8_E4M3 and U8 biased-exponent scales
[N, ceil(K/32)], config quant_method mxfp8, weight_block_size [1, 32], scale_fmt ue8m0. The
scales are X.weight_scale, as vLLM reads MXFP8, or with --engine sglang (or transformers)
X.weight_scale_inv, as SGLang and transformers read it and miles' convert_hf_to_mxfp8 writes
it; each engine refuses or misreads the other's name. Lossless where the source scales
are powers of two: by default each group gets its canonical rceil scale (identical to
ue8m0.quantize(dequantized, block=(1, 32)), checked value by value); --scales repeat copies the
element bytes and repeats each source scale byte. Tensors whose scales are not powers of two
are dequantized and requantized (lossy) and listed, with their error.

\b
--to fp8 repacks DeepSeek-V4's packed FP4 routed experts (expert_dtype fp4) to FP8 E4M3 with
128x128 F8_E8M0 .scale tensors, byte for byte as DeepSeek's own cast_e2m1fn_to_e4m3fn, for
Hopper/H20 (FP8 but no FP4 tensor cores); every other tensor is copied byte for byte and
config.json says expert_dtype fp8 (top level and in quantization_config). The cast is exact
where a tile's group scales span at most 14 binades; every tile whose values change is counted
(lossy_tiles in --json) and listed with its error; --strict refuses such a tile.
"""

#: ``--to fp8``: DeepSeek-V4's FP4 experts repacked to FP8 (not a layout of its own: the V4
#: layout with FP8 experts)
FP8_REPACK = "fp8"


@click.command(epilog=EXAMPLES)
@click.argument("src", type=SOURCE)
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    type=click.Choice([*layout_names(fixed_block=True), FP8_REPACK]),
    default=MXFP8.name,
    show_default=True,
    help="Target: mxfp8 (from UE8M0 FP8) or fp8 (DeepSeek-V4's FP4 experts to FP8).",
)
@engine_option
@click.option("--strict", is_flag=True, help="--to fp8: refuse when any tile would change.")
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
    engine: str | None,
    scales: str,
    strict: bool,
    eps: float,
    report_path: Path | None,
    top: int,
    verbose: bool,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Relayout a UE8M0 FP8 checkpoint to MXFP8, or DeepSeek-V4's FP4 experts to FP8."""
    from ue8m0.checkpoint.options import Fp4RepackOptions, Fp8Options

    opts: Fp8Options | Fp4RepackOptions
    if to == FP8_REPACK:
        layout_for(DEEPSEEK_V4, engine)  # every engine reads the V4 layout: only checks the name
        opts = Fp4RepackOptions(strict=strict).validated()
    else:
        layout = layout_for(to, engine).name
        opts = Fp8Options(layout=layout, scale_dtype="u8", eps=eps, scales=scales).validated()
    run_fp8_command(
        ("relayout", opts), src, dst, (report_path, top, verbose), dry_run, workers, quiet, as_json
    )
