"""``ue8m0 inspect CKPT``: detected format, tensors by dtype and role, scale statistics."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ue8m0.cli._output import echo_json, human_bytes, table
from ue8m0.cli.params import SOURCE
from ue8m0.printable import printable

EXAMPLES = """
\b
Examples:
  ue8m0 inspect ./DeepSeek-V3.1
  ue8m0 inspect ./model-FP8 --json
"""


@click.command(epilog=EXAMPLES)
@click.argument("ckpt", type=SOURCE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(ckpt: Path, as_json: bool) -> None:
    """Describe a safetensors checkpoint: format, tensors, quantization, scales."""
    from ue8m0.checkpoint.inspect import inspect_checkpoint

    info = inspect_checkpoint(ckpt)
    if as_json:
        echo_json(info)
        return
    click.echo(f"{printable(info['path'])}: {info['format']}")
    click.echo(f"{info['shards']} shards, {info['tensors']} tensors, {human_bytes(info['bytes'])}")
    for title, key in (("dtype", "by_dtype"), ("role", "by_role")):
        rows = [(k, v["tensors"], human_bytes(v["bytes"])) for k, v in info[key].items()]
        click.echo("\n" + table((title, "tensors", "bytes"), rows))
    if info["quantization_config"] is not None:
        click.echo("\nquantization_config: " + json.dumps(info["quantization_config"]))
    if info["blocks"]:
        click.echo("blocks: " + ", ".join(f"{r}x{c}" for r, c in info["blocks"]))
    stats = info["scale_stats"]
    if stats["scales"]:
        click.echo(
            f"scales: {stats['scale_tensors']} tensors {stats['dtypes']}, "
            f"{stats['scales']} values, {stats['power_of_two_fraction']:.2%} powers of "
            f"two, log2 min/median/max {stats['log2_min']:.1f}/"
            f"{stats['log2_median']:.1f}/{stats['log2_max']:.1f}"
        )
