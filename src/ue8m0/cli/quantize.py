"""``ue8m0 quantize SRC DST``: a BF16/FP16/FP32 checkpoint -> FP8 with UE8M0 block scales."""

from __future__ import annotations

from pathlib import Path

import click

from ue8m0.checkpoint.options import EXPERT_DTYPES
from ue8m0.checkpoint.registry import DEEPSEEK, FMTS, layout_for, layout_names
from ue8m0.checkpoint.scales import SCALE_DTYPES
from ue8m0.cli._output import (
    echo_json,
    engine_option,
    eps_option,
    run_options,
    run_or_print_plan,
    scale_search_option,
)
from ue8m0.cli.params import SOURCE
from ue8m0.policies import NonFinite, ScaleRule

EXAMPLES = """
\b
Examples:
  ue8m0 quantize ./Llama-3-8B ./Llama-3-8B-FP8
  ue8m0 quantize SRC DST --scale-rule fp32            # FP32 scales (DeepSeek-V3 layout)
  ue8m0 quantize SRC DST --scale-dtype e8m0 --workers 4
  ue8m0 quantize SRC DST --exclude 'layers\\.0\\.' --dry-run
  ue8m0 quantize SRC DST --include 'lm_head' --include 'proj'
  ue8m0 quantize SRC DST --scale-search mse          # per block, the better of 2 exponents
  ue8m0 quantize SRC DST --format compressed-tensors # weight_scale, config_groups (block)
  ue8m0 quantize SRC DST --format mxfp8              # 1x32 groups, U8 scales (vLLM)
  ue8m0 quantize SRC DST --format mxfp8 --engine sglang  # ... SGLang/transformers names
  ue8m0 quantize V4-BF16 DST --format deepseek-v4    # V4 release layout: FP4 experts, E8M0

\b
Output (DeepSeek-V3.1 layout; transformers on CPU loads it in this project's tests): X.weight
F8_E4M3 and X.weight_scale_inv (the dequant multiplier, ceil(out/128) x ceil(in/128)), F32
exact powers of two by default; config.json gains quantization_config (quant_method fp8,
scale_fmt ue8m0). Kept in high precision: embeddings, lm_head, norms, MoE routers, biases,
tensors that are not 2-D or 3-D, and weights whose dims are not multiples of the block.
--pad-partial converts those too with a zero-padded block grid (DeepSeek's convention).
Loaders differ on partial grids: vLLM takes a partial block only in the last part of a merged
layer; transformers on CPU infers the block from the grid, refuses a grid that does not divide
(576 rows, 5 scale rows) and silently misreads one that does (192 rows, 2 scale rows: 96-row
blocks).
--format deepseek-v4 takes DeepSeek-V4 tensor names and writes its release layout: FP8 with
F8_E8M0 <module>.scale (128x128, rceil), routed experts packed FP4 (DeepSeek-V4's FP4 rule, one
F8_E8M0 scale per 32 inputs; --experts fp8 keeps them FP8), expert_dtype in config.json.
--format compressed-tensors writes X.weight_scale (F32) and a float-quantized config_groups
config (strategy block, block_structure). --format mxfp8 writes 1x32 groups with U8
biased-exponent scales and quant_method mxfp8; engines name the scale differently: vLLM reads
X.weight_scale (the default), SGLang and transformers X.weight_scale_inv (--engine sglang or
--engine transformers); each refuses or misreads the other's name.
Rerunning into the same DST resumes; other parameters are refused. A run that would convert no
tensor is an error (--allow-empty writes the copy), and so is a source whose config.json
already declares another quantization (--replace-quantization-config replaces it).
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", type=SOURCE)
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--fmt",
    type=click.Choice(list(FMTS)),
    default="e4m3",
    show_default=True,
    help="FP8 element format.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(layout_names()),
    default=DEEPSEEK.name,
    show_default=True,
    help="Output layout.",
)
@engine_option
@click.option(
    "--block", default=None, help="Block shape ROWSxCOLS [the layout's: 128x128; 1x32 for mxfp8]."
)
@click.option(
    "--scale-rule",
    default=ScaleRule.RCEIL.value,
    show_default=True,
    type=click.Choice(ScaleRule.names()),
    help="How a block's scale is chosen; fp32 = amax/max, not a power of two.",
)
@scale_search_option
@click.option(
    "--scale-dtype",
    type=click.Choice(list(SCALE_DTYPES)),
    default=None,
    help="Stored scale dtype (e8m0/u8: biased exponent bytes) [the layout's: f32; u8 for mxfp8].",
)
@eps_option
@click.option(
    "--nonfinite",
    type=click.Choice([n.value for n in NonFinite]),
    default=NonFinite.RAISE.value,
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
    "--experts",
    type=click.Choice(list(EXPERT_DTYPES)),
    default=None,
    help="--format deepseek-v4: routed experts as packed FP4 (V4's FP4 rule, the release "
    "layout) or FP8 [fp4].",
)
@click.option(
    "--pad-partial",
    is_flag=True,
    help="Also convert weights whose dims are not multiples of the block.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Write the output even when no tensor is converted (else that is an error).",
)
@click.option(
    "--replace-quantization-config",
    is_flag=True,
    help="Quantize a source whose config.json already declares a quantization_config "
    "(bitsandbytes, GPTQ, ...), replacing it (else that is an error).",
)
@click.option(
    "--not-for-serving",
    is_flag=True,
    help="The output is not for vLLM/SGLang: write options their loaders misread "
    "(U8 scales, e5m2 under quant_method fp8).",
)
@run_options
def quantize(
    src: Path,
    dst: Path,
    fmt: str,
    out_format: str,
    engine: str | None,
    block: str | None,
    scale_rule: str,
    scale_search: str,
    scale_dtype: str | None,
    eps: float,
    nonfinite: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    experts: str | None,
    not_for_serving: bool,
    allow_empty: bool,
    replace_quantization_config: bool,
    pad_partial: bool,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize a safetensors checkpoint to FP8 with UE8M0 (or FP32) 128x128 block scales."""
    from ue8m0.blocks import parse_block
    from ue8m0.checkpoint.options import QuantizeOptions
    from ue8m0.checkpoint.plan_quantize import plan_quantize
    from ue8m0.checkpoint.source import check_destination, open_checkpoint

    opts = QuantizeOptions(
        fmt=fmt,
        block=None if block is None else parse_block(block),
        scale_rule=scale_rule,
        scale_dtype=scale_dtype,
        eps=eps,
        nonfinite=nonfinite,
        include=include,
        exclude=exclude,
        pad_partial=pad_partial,
        layout=layout_for(out_format, engine).name,
        scale_search=scale_search,
        experts=experts,
        not_for_serving=not_for_serving,
    ).validated()
    ckpt = open_checkpoint(src)
    check_destination(src, dst)
    plan = plan_quantize(
        ckpt,
        opts,
        allow_empty=allow_empty or dry_run,  # a dry run shows the empty plan with a note
        replace_quantization=replace_quantization_config,
    )
    result = run_or_print_plan(ckpt, plan, dst, dry_run, workers, quiet, as_json, detail=True)
    if result is not None and as_json:
        echo_json({**result.summary(), "dst": str(dst)})
