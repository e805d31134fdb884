"""``ue8m0 eval``: what each recipe costs a whole model (wiring only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ue8m0.recipes import DEFAULT_RECIPES, get_recipe

EXAMPLES = """
\b
Examples:
  ue8m0 eval                                   # bundled MiniLM, every recipe, weights only
  ue8m0 eval --activations --recipe rceil      # W8A8: inputs too, per 1x128 tile
  ue8m0 eval --both --plot cost.png            # W8 and W8A8, table and plot
  ue8m0 eval path/to/llama --text wiki.txt --max-tokens 4096   # causal LM perplexity
  ue8m0 eval path/to/gpt2 --tokenizer path/to/gpt2-tokenizer
  ue8m0 eval --sentences 64 --json

\b
MODEL is a local directory: config.json, *.safetensors weights (pickled .bin/.pt weights are
refused, never unpickled) and a tokenizer (or --tokenizer DIR); nothing is downloaded. A causal
LM (an architecture with an LM head: *ForCausalLM, GPT2LMHeadModel, ...) gets perplexity
(lm_head kept unquantized unless --exclude is given); a base model (BertModel, ...) is a sentence
encoder: mean and min embedding cosine against the unquantized model and the Spearman
correlation of all pairwise similarities; other architectures are refused. Corpus: the first
sentences of the Python standard library's module docstrings, read at run time. Third-party
warnings are hidden (UE8M0_DEBUG=1 shows them).
"""


@click.command("eval", epilog=EXAMPLES)
@click.argument(
    "model", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    metavar="NAME",
    help="Recipe (repeatable; default: every named recipe).",
)
@click.option("--activations", is_flag=True, help="W8A8: also quantize each Linear input.")
@click.option("--both", is_flag=True, help="Run W8 and W8A8 (JSON: recipes, recipes_w8a8).")
@click.option("--sentences", type=click.IntRange(min=2), help="Use the first N sentences.")
@click.option(
    "--text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text file for perplexity (default: the built-in corpus).",
)
@click.option(
    "--max-length",
    default=512,
    show_default=True,
    type=click.IntRange(min=2),
    help="Perplexity window in tokens (at most the model's positions).",
)
@click.option("--max-tokens", type=click.IntRange(min=2), help="Cut the text to N tokens.")
@click.option(
    "--exclude",
    multiple=True,
    metavar="NAME",
    help="Linear modules to leave unquantized (name, glob or prefix; repeatable).",
)
@click.option(
    "--tokenizer",
    "tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of the tokenizer (default: MODEL's).",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(
    model: Path | None,
    recipes: tuple[str, ...],
    activations: bool,
    both: bool,
    sentences: int | None,
    text: Path | None,
    max_length: int,
    max_tokens: int | None,
    exclude: tuple[str, ...],
    tokenizer: Path | None,
    plot: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fake-quantize every Linear of MODEL (default: the bundled MiniLM) under each recipe and
    measure what it costs against the unquantized model."""
    from ue8m0.evaluation.progress import make_eval_progress
    from ue8m0.evaluation.quiet import third_party_quiet
    from ue8m0.evaluation.runner import EvalSettings, eval_table, run_eval
    from ue8m0.report.text import finite_json

    modes = ("W8", "W8A8") if both else (("W8A8",) if activations else ("W8",))
    settings = EvalSettings(
        model,
        [get_recipe(r) for r in (recipes or DEFAULT_RECIPES)],
        modes,
        sentences,
        text,
        max_length,
        max_tokens,
        exclude=exclude or None,
        tokenizer=tokenizer,
    )
    with third_party_quiet():
        doc = run_eval(settings, make_eval_progress(quiet or as_json))
        if plot is not None:
            from ue8m0.evaluation.plot import plot_eval

            plot_eval(doc, plot)
    if as_json:
        click.echo(json.dumps(finite_json(doc), indent=1, allow_nan=False))
    else:
        click.echo(eval_table(doc))
