"""Perplexity of a causal LM on a text, in windows of at most ``max_length`` tokens."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ue8m0.errors import InputError


def token_ids(tokenizer: Any, text: str, max_tokens: int | None = None) -> list[int]:
    """The text's token ids (without special tokens), cut to ``max_tokens``."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if max_tokens is None else ids[:max_tokens]


def window_length(model: Any, max_length: int) -> int:
    """``max_length``, or fewer when the model has fewer positions (GPT-2's ``n_positions``)."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and 2 <= positions < max_length:
        return positions
    return max_length


def windows(tokens: int, max_length: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each window :func:`perplexity` runs (every one of >= 2 tokens)."""
    spans = [(lo, min(lo + max_length, tokens)) for lo in range(0, tokens - 1, max_length)]
    return [(lo, hi) for lo, hi in spans if hi - lo >= 2]


def perplexity(
    model: Any, ids: list[int], max_length: int = 512, step: Callable[[], None] | None = None
) -> float:
    """``exp(mean NLL)`` of ``ids`` predicted in consecutive non-overlapping windows.

    Each window predicts its tokens 2..n from the tokens before them in the same window (the
    first token of a window is context only), so every model sees the same tokens. ``step()`` is
    called after each window.
    """
    import torch

    if len(ids) < 2:
        raise InputError(f"perplexity needs a text of at least 2 tokens, got {len(ids)}")
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo, hi in windows(len(ids), max_length):
            window = torch.tensor([ids[lo:hi]])
            logits = model(input_ids=window).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
            total += float(nll)
            count += window.shape[1] - 1
            if step is not None:
                step()
    return math.exp(total / count)
