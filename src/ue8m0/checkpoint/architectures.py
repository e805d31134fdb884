"""Which weights serving engines fuse into one layer, per model family (registry data).

vLLM and SGLang load some projections as one merged layer: q/k/v as ``qkv_proj``, gate/up as
``gate_up_proj``, DeepSeek MLA's ``q_a_proj`` + ``kv_a_proj_with_mqa`` as ``fused_qkv_a_proj``,
an MoE expert's w1/w3. The members of such a group must agree in precision: vLLM raises
"Detected some but not all shards ... are quantized", SGLang cannot concatenate FP8 with BF16,
DeepSeek's ``generate.py`` loads strictly. And a partial scale block (a dim that is not a
multiple of the block) is read correctly only in the **last** member along the merged dim, and
never in an MoE expert's intermediate dim (vLLM). So ``quantize`` decides per group: every
member converted or every member kept, a partial last member converted, as the official
DeepSeek-V3 checkpoint stores ``kv_a_proj_with_mqa`` (576 rows: a 5-row partial grid) beside an
FP8 ``q_a_proj``.

transformers v5 goes further for MoE experts: it loads every expert of a layer as **one** module
(``mlp.experts.gate_up_proj`` / ``down_proj``, 3-D; with FP8, ``FP8Experts`` and one scale
tensor for them all), and its skip list matches module names, so ``mlp.experts.3.gate_proj``
never skips that module, only ``mlp.experts`` does. So all the expert weights of a layer (every
expert, gate, up and down) are decided together too, and a layer kept whole is listed as
``...experts`` in the skip list besides its per-expert modules; so is a layer whose experts the
checkpoint already stacks (Llama 4's 3-D ``feed_forward.experts.gate_up_proj``, always kept).
Measured: ``tests/test_transformers_fused_experts.py``, ``docs/loaders.md``.

A family is recognised by ``config.json``'s ``model_type``; unknown families use the common
name patterns (q/k/v, gate/up, w1/w3), which cover the fused layers of most decoder models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FusedGroup:
    """Sibling modules (leaf names) a loader merges, in the order it stacks them."""

    members: tuple[str, ...]

    @property
    def last(self) -> str:
        return self.members[-1]


@dataclass(frozen=True)
class Architecture:
    """A model family: the ``model_type`` values it covers and its fused groups."""

    name: str
    model_types: tuple[str, ...]
    groups: tuple[FusedGroup, ...]


QKV = FusedGroup(("q_proj", "k_proj", "v_proj"))
GATE_UP = FusedGroup(("gate_proj", "up_proj"))
W1_W3 = FusedGroup(("w1", "w3"))
MLA_A = FusedGroup(("q_a_proj", "kv_a_proj_with_mqa"))

#: the groups of a family ue8m0 does not know
COMMON = Architecture("common", (), (QKV, GATE_UP, W1_W3))

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "deepseek-mla",
        ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2"),
        (MLA_A, GATE_UP, W1_W3),
    ),
    Architecture(
        "llama-like",
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "granite",
            "olmo2",
        ),
        (QKV, GATE_UP, W1_W3),
    ),
)

#: an MoE expert's projection: its intermediate dim never takes a partial block
EXPERT = re.compile(r"\.experts\.\d+\.|\.experts\.")
#: one expert's weight, and a 3-D parameter of stacked experts: group 1 is the fused module
_PER_EXPERT = re.compile(r"^(.+\.experts)\.\d+\.[^.]+\.weight$")
_STACKED_EXPERTS = re.compile(r"^(.+\.experts)\.[^.]+$")


def architecture_of(config: dict[str, Any] | None) -> Architecture:
    """The family of ``config`` (its ``model_type``, or a nested ``text_config``'s), else
    :data:`COMMON`."""
    for level in (config, (config or {}).get("text_config")):
        model_type = level.get("model_type") if isinstance(level, dict) else None
        for arch in ARCHITECTURES:
            if model_type in arch.model_types:
                return arch
    return COMMON


def group_of(arch: Architecture, module: str) -> tuple[str, FusedGroup] | None:
    """``(parent module, group)`` of ``module`` (``a.b.q_proj`` -> ``("a.b", QKV)``), or None
    when it is fused with nothing."""
    parent, _, leaf = module.rpartition(".")
    for group in arch.groups:
        if leaf in group.members:
            return parent, group
    return None


def experts_module_of(name: str, shape: tuple[int, ...]) -> str | None:
    """The fused-experts module transformers v5 loads tensor ``name`` into: one expert's 2-D
    weight (``model.layers.0.mlp.experts.3.gate_proj.weight`` -> ``model.layers.0.mlp.experts``)
    or stacked experts, 3-D (``model.layers.0.feed_forward.experts.gate_up_proj``); else None."""
    if len(shape) == 2 and (found := _PER_EXPERT.match(name)):
        return found.group(1)
    if len(shape) == 3 and (found := _STACKED_EXPERTS.match(name)):
        return found.group(1)
    return None


def skip_modules(
    tensors: Iterable[tuple[str, tuple[int, ...]]], kept: Callable[[str], bool]
) -> list[str]:
    """The skip list of an output whose tensors (``(name, shape)``) are ``kept`` in high
    precision or converted: the module of every kept matrix ``....weight``, and every
    fused-experts module whose tensors are all kept (transformers v5 matches only that name)."""
    out: set[str] = set()
    experts: dict[str, bool] = {}
    for name, shape in tensors:
        is_kept = kept(name)
        if is_kept and name.endswith(".weight") and len(shape) >= 2:
            out.add(name.rsplit(".", 1)[0])
        layer = experts_module_of(name, shape)
        if layer is not None:
            experts[layer] = experts.get(layer, True) and is_kept
    out.update(layer for layer, all_kept in experts.items() if all_kept)
    return sorted(out)
