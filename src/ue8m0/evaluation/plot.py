"""The eval's PNG: the loss against the unquantized model per recipe, W8 and W8A8 side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.evaluation.runner import RESULT_KEYS
from ue8m0.extras import figure


def _panels(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    if doc["kind"] == "causal-lm":
        base = doc["baseline"]["perplexity"]
        return [
            (f"perplexity increase over unquantized ({base:.3f})", lambda r: r["perplexity"] - base)
        ]
    return [
        ("1 - mean embedding cosine", lambda r: 1.0 - r["cosine_mean"]),
        ("1 - Spearman of pairwise similarities", lambda r: 1.0 - r["spearman"]),
    ]


def plot_eval(doc: dict[str, Any], path: Path) -> Path:
    """Grouped bars per recipe (one bar per mode), log scale: lower is better."""
    panels = _panels(doc)
    modes = [(key, mode) for key, mode in zip(RESULT_KEYS, doc["modes"], strict=False)]
    names = list(doc[modes[0][0]])
    fig: Any = figure(4.2 * len(panels) + 1, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    width = 0.8 / len(modes)
    for ax, (title, value) in zip(axes, panels, strict=True):
        for i, (key, mode) in enumerate(modes):
            heights = [max(value(doc[key][n]), 1e-9) for n in names]
            ax.bar(
                np.arange(len(names)) + (i - (len(modes) - 1) / 2) * width,
                heights,
                width,
                label=mode,
            )
        ax.set_xticks(np.arange(len(names)), names, rotation=30)
        ax.set_yscale("log")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    path_ = Path(doc["model"])
    name = path_.parent.name if path_.name == "model" else path_.name
    fig.suptitle(f"What quantization costs {name} (lower is better)")
    fig.savefig(path)
    return path
