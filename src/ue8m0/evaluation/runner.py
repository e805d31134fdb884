"""Run an eval: the unquantized model, then one quantized copy per recipe and mode.

Modes are ``W8`` (Linear weights fake-quantized) and ``W8A8`` (also each Linear input, per
1×128 tile, dynamically). The result is a plain dict, the document ``ue8m0 eval --json`` prints.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue8m0.corpus import corpus_digest, stdlib_sentences
from ue8m0.errors import InputError
from ue8m0.evaluation import embedding, models, perplexity
from ue8m0.evaluation.progress import EvalProgress
from ue8m0.recipes import Recipe

#: mode name -> activations quantized
MODES = {"W8": False, "W8A8": True}
#: JSON key of each mode's results, in the order the modes run. The first mode's results go
#: under ``recipes``, the key of the document ``ue8m0 eval --json`` has printed since it was
#: specified (``{"model": ..., "recipes": {NAME: {metric: value}}}``, W8 only), so a W8 or a
#: ``--activations`` run reads the same; the second mode of ``--both`` (W8A8) is ``recipes_w8a8``.
RESULT_KEYS = ("recipes", "recipes_w8a8")


@dataclass
class EvalSettings:
    """What to evaluate and on what."""

    model: Path | None = None
    recipes: Sequence[Recipe] = ()
    modes: Sequence[str] = ("W8",)
    sentences: int | None = None
    text: Path | None = None
    max_length: int = 512
    max_tokens: int | None = None
    batch_size: int = 32
    exclude: tuple[str, ...] | None = None
    tokenizer: Path | None = None


def _corpus_info(sentences: list[str]) -> dict[str, Any]:
    return {
        "source": "first sentences of the Python standard library's module docstrings",
        "python": platform.python_version(),
        "sentences": len(sentences),
        "sha256_12": corpus_digest(sentences),
    }


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


@dataclass(frozen=True)
class Task:
    """How one model is measured: ``run(model, step)`` gives its output (``step()`` after each of
    its ``batches``), ``score(reference, output)`` what the output costs against the
    unquantized model's."""

    run: Callable[[Any, Callable[[], None]], Any]
    score: Callable[[Any, Any], dict[str, float]]
    batches: int


def _perplexity_task(
    settings: EvalSettings, base: Any, tokenizer: Any, doc: dict[str, Any]
) -> Task:
    """Perplexity on ``--text`` or the corpus (fills ``doc["text"]``)."""
    if settings.text is not None:
        text = _read_text(settings.text)
        doc["text"] = {"file": str(settings.text)}
    else:
        lines = stdlib_sentences(settings.sentences)
        text = "\n".join(lines)
        doc["text"] = _corpus_info(lines)
    ids = perplexity.token_ids(tokenizer, text, settings.max_tokens)
    if len(ids) < 2:
        where = settings.text or "the corpus"
        raise InputError(f"{where}: perplexity needs at least 2 tokens, the text has {len(ids)}")
    window = perplexity.window_length(base, settings.max_length)
    doc["text"].update(tokens=len(ids), window=window)
    return Task(
        run=lambda model, step: {"perplexity": perplexity.perplexity(model, ids, window, step)},
        score=lambda reference, output: output,
        batches=len(perplexity.windows(len(ids), window)),
    )


def _embedding_task(settings: EvalSettings, tokenizer: Any, doc: dict[str, Any]) -> Task:
    """Embedding closeness on the corpus (fills ``doc["corpus"]``)."""
    sentences = stdlib_sentences(settings.sentences)
    doc["corpus"] = _corpus_info(sentences)
    return Task(
        run=lambda model, step: embedding.embed(
            model, tokenizer, sentences, settings.batch_size, step
        ),
        score=embedding.embedding_metrics,
        batches=embedding.batches(len(sentences), settings.batch_size),
    )


def run_eval(settings: EvalSettings, progress: EvalProgress | None = None) -> dict[str, Any]:
    """Evaluate every recipe in every mode; see the module docstring. ``progress`` hears of
    every batch of every model (and is closed on return)."""
    progress = progress or EvalProgress()
    try:
        return _run(settings, progress)
    finally:
        progress.close()


def _run(settings: EvalSettings, progress: EvalProgress) -> dict[str, Any]:
    path = settings.model or models.minilm_dir()
    kind = models.model_kind(path)
    causal = kind == models.CAUSAL_LM
    base, tokenizer = models.load(path, causal, settings.tokenizer)
    exclude = settings.exclude if settings.exclude is not None else (("lm_head",) if causal else ())
    doc: dict[str, Any] = {"model": str(path), "kind": kind}
    if settings.tokenizer is not None:
        doc["tokenizer"] = str(settings.tokenizer)
    task = (
        _perplexity_task(settings, base, tokenizer, doc)
        if causal
        else _embedding_task(settings, tokenizer, doc)
    )
    progress.start(task.batches * (1 + len(settings.recipes) * len(settings.modes)))
    progress.stage("unquantized")
    reference = task.run(base, progress.step)
    if causal:
        doc["baseline"] = reference
    doc["modes"] = list(settings.modes)
    doc["activations"] = MODES[settings.modes[0]]
    for key, mode in zip(RESULT_KEYS, settings.modes, strict=False):
        results: dict[str, Any] = {}
        for recipe in settings.recipes:
            progress.stage(f"{mode} {recipe.name}")
            model, replaced = models.quantized_copy(base, recipe, MODES[mode], exclude)
            results[recipe.name] = {
                "label": recipe.label,
                "linear_layers": len(replaced),
                **task.score(reference, task.run(model, progress.step)),
            }
            del model
        doc[key] = results
    return doc


def _cell(value: Any, spec: str) -> str:
    if not isinstance(value, float):
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)


def eval_table(doc: dict[str, Any]) -> str:
    """The terminal table of an eval document: one row per recipe and mode, every column as wide
    as its widest cell (text left-aligned, numbers right-aligned)."""
    causal = doc["kind"] == "causal-lm"
    cols = (
        [("PERPLEXITY", "perplexity", ".4f")]
        if causal
        else [
            ("COSINE MEAN", "cosine_mean", ".6f"),
            ("COSINE MIN", "cosine_min", ".6f"),
            ("SPEARMAN", "spearman", ".6f"),
        ]
    )
    if causal:
        text = doc["text"]
        window = f", windows of {text['window']}" if "window" in text else ""
        size = f"{text['tokens']} tokens{window}"
    else:
        size = f"{doc['corpus']['sentences']} sentences"
    rows = [["RECIPE", "LABEL", "MODE", *(c[0] for c in cols)]]
    if causal:
        rows.append(["none", "unquantized", "-", _cell(doc["baseline"]["perplexity"], ".4f")])
    for key, mode in zip(RESULT_KEYS, doc["modes"], strict=False):
        for name, row in doc[key].items():
            rows.append([name, row["label"], mode, *(_cell(row.get(k), f) for _, k, f in cols)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text_cols = 3  # RECIPE, LABEL, MODE
    lines = [f"{doc['model']} ({doc['kind']}, {size})"]
    for row in rows:
        cells = [
            c.ljust(w) if i < text_cols else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
