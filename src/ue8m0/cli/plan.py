"""``ue8m0 plan``: how many chips of which kind a model needs, and what BF16 vs FP8 buys on each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ue8m0.plan.calibrate import calibration_points
from ue8m0.plan.chips import Chip, load_db
from ue8m0.plan.errors import PlanError
from ue8m0.plan.estimate import UPPER_BOUND, model_summary
from ue8m0.plan.estimate import plan as make_plan
from ue8m0.plan.precision import FORMATS, parse_formats
from ue8m0.plan.presets import load_model, preset_names
from ue8m0.plan.table import render_calibration, render_chips, render_plan

DEFAULT_CHIPS = ("h20", "h100", "h200", "b200", "mi355x", "ascend910c")

EXAMPLES = """
\b
Examples:
  ue8m0 plan --model deepseek-v3.1 --chip h20 --chip h200 --format bf16,fp8
  ue8m0 plan --model deepseek-v3.1 --chip h20,h100,h200,ascend910c,mi355x,b200 \\
      --num-chips 8 --batch 1,64 --context 8192 --plot plots/
  ue8m0 plan --model path/to/config.json --chip all --format fp8 --json
  ue8m0 plan --model deepseek-v4-flash --chip h20,h100,b200,ascend910c,mi355x \\
      --format fp4-experts,fp8 --batch 1,64
  ue8m0 plan --model qwen3-235b-a22b --chip 910b --chips my_chips.toml --kv-format fp8
  ue8m0 plan --calibrate            # estimates beside measured data points
  ue8m0 plan --list-chips           # the database (--json adds sources and confidence)
\b
Formats: bf16; fp8 (E4M3, UE8M0 scale per 128x128, DeepSeek-V3.1; DeepSeek-V4 with its
experts repacked to FP8); mxfp8 (per 1x32); mxfp4 (E2M1, per 1x32); int8 (W8A8);
fp4-experts (the DeepSeek-V4 release: fp8 dense, routed experts E2M1 with a UE8M0 scale per
1x32, 4.25 bits). Chips without FP8 (FP4) math run FP8 (FP4) weights weight-only: fewer
bytes, no compute speed-up. Every figure is an upper bound.
"""


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be integers separated by commas") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{what} must be at least 1")
    return values


def _chip_json(chip: Chip) -> dict[str, Any]:
    fields = {
        n: {"value": s.value, "src": s.src, "conf": s.conf.value}
        for n, s in chip.sourced_fields().items()
    }
    return {
        "key": chip.key,
        "name": chip.name,
        "vendor": chip.vendor,
        "aliases": chip.aliases,
        "arch": chip.arch,
        "year": chip.year,
        "capability_class": chip.capability_class,
        "scaleup_tech": chip.scaleup_tech,
        "scaleup_domain": chip.scaleup_domain,
        "notes": chip.notes,
        "origin": chip.origin,
        **fields,
    }


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=list))


@click.command(epilog=EXAMPLES)
@click.option(
    "--model",
    "model_name",
    metavar="NAME|CONFIG.json",
    help=f"Preset ({', '.join(preset_names())}) or a Hugging Face config.json.",
)
@click.option(
    "--chip",
    "chip_names",
    multiple=True,
    metavar="NAME",
    help="Chip key or alias, repeatable or comma-separated; 'all' for every chip. "
    f"Default: {','.join(DEFAULT_CHIPS)}.",
)
@click.option(
    "--chips",
    "chip_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Extra chips (TOML or JSON, the schema of the shipped chips.toml).",
)
@click.option(
    "--format",
    "formats",
    default="bf16,fp8",
    show_default=True,
    help=f"Weight formats, comma-separated: {', '.join(FORMATS)}.",
)
@click.option(
    "--batch",
    default="1",
    show_default=True,
    help="Decode batch sizes (sequences per step), comma-separated.",
)
@click.option(
    "--context",
    default=8192,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tokens per sequence: the prompt for prefill, the KV length for decode.",
)
@click.option(
    "--num-chips",
    type=click.IntRange(min=1),
    help="Chips in the system (default: the fewest that fit).",
)
@click.option(
    "--reserve",
    default=0.10,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of each chip's memory kept free (activations, runtime).",
)
@click.option(
    "--kv-format",
    type=click.Choice(["bf16", "fp8"]),
    default="bf16",
    show_default=True,
    help="KV-cache element format.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a roofline PNG per chip and a decode bar chart here (needs matplotlib).",
)
@click.option("--calibrate", is_flag=True, help="Show estimates beside measured data points.")
@click.option("--list-chips", is_flag=True, help="Show the chip database.")
def plan(
    model_name: str | None,
    chip_names: tuple[str, ...],
    chip_files: tuple[Path, ...],
    formats: str,
    batch: str,
    context: int,
    num_chips: int | None,
    reserve: float,
    kv_format: str,
    as_json: bool,
    plot_dir: Path | None,
    calibrate: bool,
    list_chips: bool,
) -> None:
    """Roofline planner: chips needed, prefill time and decode tokens/s, BF16 vs FP8-UE8M0."""
    db = load_db(chip_files)
    if list_chips:
        chips = db.select(chip_names) if chip_names else list(db.chips)
        if as_json:
            _echo_json({"chips": [_chip_json(c) for c in chips], "sources": db.sources})
        else:
            click.echo(render_chips(chips))
        return
    if calibrate:
        points = calibration_points(db)
        if as_json:
            _echo_json({"points": [p.to_dict() for p in points], "upper_bound": UPPER_BOUND})
        else:
            click.echo(render_calibration(points))
        return
    if model_name is None:
        names = ", ".join(preset_names())
        raise click.UsageError(f"--model is required (a preset: {names}; or a config.json)")
    model = load_model(model_name)
    chips = db.select(chip_names or DEFAULT_CHIPS)
    try:
        estimates = make_plan(
            model,
            chips,
            parse_formats(formats),
            _ints(batch, "--batch"),
            context,
            num_chips,
            reserve,
            kv_format,
        )
    except PlanError as exc:
        raise click.BadParameter(str(exc)) from None
    plots = []
    if plot_dir is not None:
        from ue8m0.plan.plots import write_plots

        plots = [str(p) for p in write_plots(estimates, plot_dir)]
    if as_json:
        _echo_json(
            {
                "model": model_summary(model),
                "workload": {
                    "context": context,
                    "batches": _ints(batch, "--batch"),
                    "num_chips": num_chips,
                    "reserve": reserve,
                    "kv_format": kv_format,
                },
                "upper_bound": UPPER_BOUND,
                "estimates": [e.to_dict() for e in estimates],
                "plots": plots,
            }
        )
        return
    click.echo(render_plan(model, estimates))
    for p in plots:
        click.echo(f"wrote {p}")
