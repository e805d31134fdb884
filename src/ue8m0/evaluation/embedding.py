"""Sentence embeddings (mean pooling, L2 normalised, as sentence-transformers does for MiniLM)
and how close a quantized model's embeddings stay to the unquantized model's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ue8m0.evaluation.perplexity import window_length
from ue8m0.metrics import rowwise_cosine, spearman

#: sentences are cut to this many tokens (or the model's positions, when it has fewer)
MAX_TOKENS = 256


def batches(sentences: int, batch_size: int = 32) -> int:
    """How many batches :func:`embed` runs."""
    return -(-sentences // batch_size)


def embed(
    model: Any,
    tokenizer: Any,
    sentences: list[str],
    batch_size: int = 32,
    step: Callable[[], None] | None = None,
) -> np.ndarray:
    """float64 unit embeddings, one row per sentence (attention-masked mean of the last layer);
    ``step()`` is called after each batch."""
    import torch

    max_length = window_length(model, MAX_TOKENS)
    rows = []
    with torch.inference_mode():
        for lo in range(0, len(sentences), batch_size):
            batch = tokenizer(
                sentences[lo : lo + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).double().numpy())
            if step is not None:
                step()
    return np.concatenate(rows)


def pairwise_similarities(emb: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows (upper triangle, row-major), for unit rows."""
    sims = emb @ emb.T
    upper = np.triu_indices(len(emb), k=1)
    return sims[upper]


def embedding_metrics(reference: np.ndarray, quantized: np.ndarray) -> dict[str, float]:
    """Mean and min cosine to the reference embeddings, and the Spearman correlation of all
    pairwise similarities (does the quantized model rank sentence pairs the same way?)."""
    cos = rowwise_cosine(reference, quantized)
    return {
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "spearman": spearman(pairwise_similarities(reference), pairwise_similarities(quantized)),
    }
