"""Perplexity of a causal LM on a text, in windows of at most ``max_length`` tokens."""

from __future__ import annotations

import math
from typing import Any


def token_ids(tokenizer: Any, text: str, max_tokens: int | None = None) -> list[int]:
    """The text's token ids (without special tokens), cut to ``max_tokens``."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if max_tokens is None else ids[:max_tokens]


def perplexity(model: Any, ids: list[int], max_length: int = 512) -> float:
    """``exp(mean NLL)`` of ``ids`` predicted in consecutive non-overlapping windows.

    Each window predicts its tokens 2..n from the tokens before them in the same window (the
    first token of a window is context only), so every model sees the same tokens.
    """
    import torch

    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least 2 tokens")
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(ids) - 1, max_length):
            window = torch.tensor([ids[lo : lo + max_length]])
            if window.shape[1] < 2:
                break
            logits = model(input_ids=window).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
            total += float(nll)
            count += window.shape[1] - 1
    return math.exp(total / count)
