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
from ue8m0.evaluation import embedding, models, perplexity
from ue8m0.recipes import Recipe

#: mode name -> activations quantized
MODES = {"W8": False, "W8A8": True}
#: JSON key of each mode's results: the first mode run is ``recipes`` (the issue's schema)
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


def _corpus_info(sentences: list[str]) -> dict[str, Any]:
    return {
        "source": "first sentences of the Python standard library's module docstrings",
        "python": platform.python_version(),
        "sentences": len(sentences),
        "sha256_12": corpus_digest(sentences),
    }


def run_eval(
    settings: EvalSettings, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Evaluate every recipe in every mode; see the module docstring."""
    path = settings.model or models.minilm_dir()
    causal = models.is_causal_lm(path)
    base, tokenizer = models.load(path, causal)
    exclude = settings.exclude if settings.exclude is not None else (("lm_head",) if causal else ())
    doc: dict[str, Any] = {"model": str(path), "kind": "causal-lm" if causal else "embedding"}
    if causal:
        if settings.text is not None:
            text = settings.text.read_text(encoding="utf-8")
            doc["text"] = {"file": str(settings.text)}
        else:
            lines = stdlib_sentences(settings.sentences)
            text = "\n".join(lines)
            doc["text"] = _corpus_info(lines)
        ids = perplexity.token_ids(tokenizer, text, settings.max_tokens)
        doc["text"]["tokens"] = len(ids)

        def measure(model: Any) -> dict[str, float]:
            return {"perplexity": perplexity.perplexity(model, ids, settings.max_length)}
    else:
        sentences = stdlib_sentences(settings.sentences)
        doc["corpus"] = _corpus_info(sentences)
        reference = embedding.embed(base, tokenizer, sentences, settings.batch_size)

        def measure(model: Any) -> dict[str, float]:
            emb = embedding.embed(model, tokenizer, sentences, settings.batch_size)
            return embedding.embedding_metrics(reference, emb)

    if causal:
        doc["baseline"] = measure(base)
    doc["modes"] = list(settings.modes)
    doc["activations"] = MODES[settings.modes[0]]
    for key, mode in zip(RESULT_KEYS, settings.modes, strict=False):
        results: dict[str, Any] = {}
        for recipe in settings.recipes:
            if progress is not None:
                progress(f"{mode} {recipe.name}")
            model, replaced = models.quantized_copy(base, recipe, MODES[mode], exclude)
            results[recipe.name] = {
                "label": recipe.label,
                "linear_layers": len(replaced),
                **measure(model),
            }
            del model
        doc[key] = results
    return doc


def _cell(value: Any, spec: str) -> str:
    if not isinstance(value, float):
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)


def eval_table(doc: dict[str, Any]) -> str:
    """The terminal table of an eval document: one row per recipe and mode."""
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
    corpus = doc.get("corpus") or doc.get("text") or {}
    size = corpus.get("sentences") or corpus.get("tokens")
    unit = "sentences" if "sentences" in corpus else "tokens"
    lines = [f"{doc['model']} ({doc['kind']}, {size} {unit})"]
    lines.append(f"{'RECIPE':<10}{'LABEL':<20}{'MODE':<7}" + "".join(f"{c[0]:>14}" for c in cols))
    if causal:
        base = doc["baseline"]["perplexity"]
        lines.append(f"{'none':<10}{'unquantized':<20}{'-':<7}{_cell(base, '.4f'):>14}")
    for key, mode in zip(RESULT_KEYS, doc["modes"], strict=False):
        for name, row in doc[key].items():
            cells = "".join(f"{_cell(row.get(k), spec):>14}" for _, k, spec in cols)
            lines.append(f"{name:<10}{row['label']:<20}{mode:<7}{cells}")
    return "\n".join(lines)
