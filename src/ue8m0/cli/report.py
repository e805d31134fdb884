"""``ue8m0 report``: what each recipe costs on every tensor of a checkpoint (wiring only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ue8m0.cli._output import workers_option
from ue8m0.cli.params import SOURCE
from ue8m0.printable import printable
from ue8m0.recipes import DEFAULT_RECIPES, get_recipe

EXAMPLES = """
\b
Examples:
  ue8m0 report                                         # the bundled MiniLM
  ue8m0 report model.safetensors
  ue8m0 report path/to/checkpoint/ --out /tmp/report/  # + index.html and PNG plots
  ue8m0 report ckpt/ --workers 2                       # tensors in 2 processes
  ue8m0 report ckpt/ --recipe rceil --recipe fp32 --recipe e4m3:1x128:floor
  ue8m0 report ckpt/ --include '*.mlp.*' --rank-by sqnr_db --top 20
  ue8m0 report ckpt/ --json > report.json

\b
Recipes (defaults: all): rceil, fp32, floor (e4m3 128x128), mxfp8 (e4m3 1x32 rceil),
e5m2 (128x128 rceil), mxfp4 (e2m1 1x32 rceil), rceil-mse and mxfp4-mse (the MSE scale
search), or FMT:RxC:RULE[:mse].
JSON writes non-finite numbers as the strings "inf", "-inf", "nan".
"""


@click.command(epilog=EXAMPLES)
@click.argument("src", required=False, type=SOURCE)
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    metavar="NAME",
    help=f"Recipe to measure (repeatable; default: all {len(DEFAULT_RECIPES)} named recipes).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write index.html, report.json and the PNG plots into this directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only tensors whose name matches (repeatable)."
)
@click.option(
    "--rank-by",
    default="worst_row_sqnr_db",
    show_default=True,
    type=click.Choice(
        ["worst_row_sqnr_db", "sqnr_db", "rel_frobenius", "max_abs_error", "flushed", "saturated"]
    ),
    help="Metric that orders tensors worst first (under the first recipe).",
)
@click.option("--top", default=10, show_default=True, help="Worst tensors listed in the table.")
@click.option(
    "--slab-mb",
    default=64,
    show_default=True,
    help="Rows read at a time, in MiB of float32 (the memory bound, per worker).",
)
@workers_option("tensors")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def report(
    src: Path | None,
    recipes: tuple[str, ...],
    out: Path | None,
    as_json: bool,
    include: tuple[str, ...],
    rank_by: str,
    top: int,
    slab_mb: int,
    workers: int,
    quiet: bool,
) -> None:
    """Quantize every float tensor of SRC (a .safetensors file or a checkpoint directory;
    default: the bundled MiniLM)
    under each recipe and report SQNR, relative Frobenius error, cosine, max abs error,
    saturated and flushed-to-zero fractions, and per-block headroom."""
    from ue8m0.report.analysis import analyze_checkpoint
    from ue8m0.report.progress import make_report_progress
    from ue8m0.report.text import report_json, terminal_report

    if src is None:
        from ue8m0.evaluation.models import minilm_dir

        src = minilm_dir() / "model.safetensors"
    chosen = [get_recipe(r) for r in (recipes or DEFAULT_RECIPES)]
    if out is not None:  # before any work: never into SRC, never through a symlink
        from ue8m0.report.outdir import check_report_out
        from ue8m0.report.plots import PLOTS

        check_report_out(src, out, tuple(PLOTS.values()))
    result = analyze_checkpoint(
        src,
        chosen,
        include=include,
        rank_by=rank_by,
        slab_bytes=max(1, slab_mb) << 20,
        workers=workers,
        progress=make_report_progress(quiet, as_json),
    )
    document = report_json(result)
    if out is not None:
        from ue8m0.report.html import write_html
        from ue8m0.report.outdir import write_text_atomic
        from ue8m0.report.plots import write_plots

        plots = write_plots(result, out)
        write_text_atomic(out / "report.json", json.dumps(document, indent=1) + "\n")
        page = write_html(result, plots, out / "index.html")
    if as_json:
        click.echo(json.dumps(document, indent=1, allow_nan=False))
    else:
        click.echo(terminal_report(result, top))
    if out is not None:
        click.echo(f"wrote {printable(str(page))} and {len(plots)} plots", err=True)
