"""Model specs from Hugging Face ``config.json``: weight shapes, parameter counts, KV-cache bytes.

A :class:`ModelSpec` is built from a config dict (dense Llama/Qwen, MoE with or without shared
experts, DeepSeek MLA with its compressed KV latent, MTP layers). Every count is derived from the
list of weight tensors, never typed in. Presets are the configs shipped under ``plan/data/models``.

Parameter roles decide what a format quantizes and what a decode step reads:

- ``ATTENTION``, ``FFN`` (dense MLP and shared experts), ``EXPERT`` (routed experts) are the
  linear weights of the decoder layers: quantized by FP8/MXFP4/INT8 plans.
- ``EMBEDDING``, ``HEAD``, ``ROUTER``, ``NORM`` (norms and biases) stay in BF16, as in the
  DeepSeek FP8 checkpoints. A decode step reads one embedding row per token, all of the rest.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ue8m0.plan.errors import PlanError


class Role(enum.Enum):
    """What a weight tensor is for (see the module docstring)."""

    EMBEDDING = "embedding"
    HEAD = "head"
    ATTENTION = "attention"
    FFN = "ffn"
    EXPERT = "expert"
    ROUTER = "router"
    NORM = "norm"

    @property
    def quantizable(self) -> bool:
        """Linear weights of the decoder layers: the ones a low-precision plan stores in FP8/FP4."""
        return self in (Role.ATTENTION, Role.FFN, Role.EXPERT)


@dataclass(frozen=True)
class Weight:
    """``count`` tensors of shape ``(rows, cols)`` (a vector is ``(1, n)``) with one role."""

    name: str
    rows: int
    cols: int
    count: int
    role: Role

    @property
    def params(self) -> int:
        """Number of parameters of all ``count`` tensors."""
        return self.rows * self.cols * self.count


class Attention(enum.Enum):
    """Attention kinds and their KV cache per token and layer.

    - ``GQA`` (incl. MHA/MQA): ``2 · n_kv_heads · head_dim`` elements (K and V).
    - ``MLA`` (DeepSeek): ``kv_lora_rank + qk_rope_head_dim`` elements (the compressed latent and
      the shared RoPE key), shared by all heads.
    """

    GQA = "gqa"
    MLA = "mla"


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise PlanError(f"config.json lacks {key!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """One model: its config fields that matter for planning and its weight tensors."""

    name: str
    hidden: int
    layers: int
    vocab: int
    attention: Attention
    q_heads: int
    kv_heads: int
    head_dim: int  # GQA head dim; MLA: qk_nope + qk_rope
    v_head_dim: int
    kv_lora_rank: int  # MLA only (0 otherwise)
    rope_dim: int  # MLA only (0 otherwise)
    moe_layers: int
    experts: int
    experts_per_token: int
    max_context: int
    weights: tuple[Weight, ...]
    mtp_weights: tuple[Weight, ...] = ()

    # ----------------------------------------------------------------- parameters
    def params(self, *roles: Role) -> int:
        """Parameters of the main model (no MTP), restricted to ``roles`` when given."""
        return sum(w.params for w in self.weights if not roles or w.role in roles)

    @property
    def total_params(self) -> int:
        """All parameters of the main model (MTP layers excluded, as published totals do)."""
        return self.params()

    @property
    def expert_params(self) -> int:
        """Parameters of the routed experts of all layers."""
        return self.params(Role.EXPERT)

    @property
    def active_params(self) -> int:
        """Parameters one token uses: all but the routed experts it is not routed to.

        ``total − expert_params · (1 − k/E)``; embedding and head included (the published
        convention).
        """
        if not self.experts:
            return self.total_params
        unused = self.expert_params * (self.experts - self.experts_per_token) // self.experts
        return self.total_params - unused

    @property
    def mtp_params(self) -> int:
        """Unique parameters of the multi-token-prediction layers (embedding and head shared)."""
        return sum(w.params for w in self.mtp_weights)

    @property
    def is_moe(self) -> bool:
        """Whether the model has routed experts."""
        return self.experts > 0

    def experts_touched(self, tokens: float) -> float:
        """Expected distinct routed experts per MoE layer for ``tokens`` tokens in one step.

        Uniform routing: ``E · (1 − (1 − k/E)^tokens)``.
        """
        if not self.experts:
            return 0.0
        return self.experts * (1.0 - (1.0 - self.experts_per_token / self.experts) ** tokens)

    # ----------------------------------------------------------------- KV cache
    @property
    def kv_elements_per_token(self) -> int:
        """KV-cache elements per token over all layers (see :class:`Attention`)."""
        if self.attention is Attention.MLA:
            return self.layers * (self.kv_lora_rank + self.rope_dim)
        return 2 * self.layers * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_format: str = "bf16") -> int:
        """KV-cache bytes per token of one sequence.

        ``bf16``: 2 bytes per element. ``fp8``: 1 byte per element; for MLA the packed layout of
        FlashMLA/vLLM per layer: the latent in FP8 with one FP32 scale per 128 elements and the
        RoPE key in BF16 (``512 + 4·4 + 64·2 = 656`` bytes for DeepSeek-V3).
        """
        if kv_format == "bf16":
            return 2 * self.kv_elements_per_token
        if kv_format == "fp8":
            if self.attention is Attention.MLA:
                per_layer = self.kv_lora_rank + 4 * math.ceil(self.kv_lora_rank / 128)
                return self.layers * (per_layer + 2 * self.rope_dim)
            return self.kv_elements_per_token
        raise PlanError(f"unknown KV-cache format {kv_format!r} (use bf16 or fp8)")

    # ----------------------------------------------------------------- attention FLOPs
    def attention_flops(self, context: float, absorbed: bool) -> float:
        """FLOPs of score and context products for one query token against ``context`` keys.

        GQA: ``4 · L · n_q · head_dim · ctx``. MLA absorbed (decode):
        ``2 · L · n_q · (2·kv_lora + rope) · ctx``; MLA expanded (prefill):
        ``2 · L · n_q · (qk_head_dim + v_head_dim) · ctx``.
        """
        if self.attention is Attention.MLA:
            width = (
                2 * self.kv_lora_rank + self.rope_dim
                if absorbed
                else (self.head_dim + self.v_head_dim)
            )
            return 2.0 * self.layers * self.q_heads * width * context
        return 4.0 * self.layers * self.q_heads * self.head_dim * context

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: dict[str, Any], name: str | None = None) -> ModelSpec:
        """Build a spec from a Hugging Face ``config.json`` dict."""
        h = int(_get(config, "hidden_size"))
        layers = int(_get(config, "num_hidden_layers"))
        vocab = int(_get(config, "vocab_size"))
        nq = int(_get(config, "num_attention_heads"))
        nkv = int(config.get("num_key_value_heads") or nq)
        model_type = str(config.get("model_type", ""))
        name = name or str(config.get("_name_or_path") or model_type or "model")

        mla = config.get("kv_lora_rank") is not None
        attn, kv_lora, rope, hd, vhd = _attention(config, h, nq, nkv, mla, model_type)
        moe = _moe(config, layers)
        ffn, expert_ffn, n_experts, top_k, n_shared, moe_layer_ids = moe
        n_moe = len(moe_layer_ids)

        def layer_weights(moe_count: int, dense_count: int) -> list[Weight]:
            out = [
                Weight(n, r, c, k * (moe_count + dense_count), Role.ATTENTION)
                for n, r, c, k in attn
                if n != "attn_norms"
            ]
            out += [
                Weight(n, r, c, k * (moe_count + dense_count), Role.NORM)
                for n, r, c, k in attn
                if n == "attn_norms"
            ]
            out.append(Weight("layer_norms", 1, h, 2 * (moe_count + dense_count), Role.NORM))
            if dense_count and ffn:
                out += _mlp("mlp", h, ffn, dense_count, Role.FFN)
            if moe_count:
                out += _mlp("experts", h, expert_ffn, moe_count * n_experts, Role.EXPERT)
                out.append(Weight("router", n_experts, h, moe_count, Role.ROUTER))
                if config.get("topk_method") == "noaux_tc":
                    out.append(Weight("router_bias", 1, n_experts, moe_count, Role.ROUTER))
                if n_shared:
                    out += _mlp("shared_experts", h, n_shared, moe_count, Role.FFN)
                shared_gate = config.get("shared_expert_intermediate_size")
                if shared_gate and model_type.startswith("qwen2_moe"):
                    out.append(Weight("shared_expert_gate", 1, h, moe_count, Role.ROUTER))
            return out

        weights = [Weight("embed_tokens", vocab, h, 1, Role.EMBEDDING)]
        weights += layer_weights(n_moe, layers - n_moe)
        weights.append(Weight("final_norm", 1, h, 1, Role.NORM))
        if not config.get("tie_word_embeddings", False):
            weights.append(Weight("lm_head", vocab, h, 1, Role.HEAD))

        mtp: list[Weight] = []
        n_mtp = int(config.get("num_nextn_predict_layers") or 0)
        if n_mtp:
            mtp_moe = n_mtp if moe_layer_ids else 0
            mtp = layer_weights(mtp_moe, n_mtp - mtp_moe)
            mtp += [
                Weight("mtp_eh_proj", h, 2 * h, n_mtp, Role.ATTENTION),
                Weight("mtp_norms", 1, h, 3 * n_mtp, Role.NORM),
            ]
        return cls(
            name=name,
            hidden=h,
            layers=layers,
            vocab=vocab,
            attention=Attention.MLA if mla else Attention.GQA,
            q_heads=nq,
            kv_heads=nkv,
            head_dim=hd,
            v_head_dim=vhd,
            kv_lora_rank=kv_lora,
            rope_dim=rope,
            moe_layers=n_moe,
            experts=n_experts,
            experts_per_token=top_k,
            max_context=int(config.get("max_position_embeddings") or 0),
            weights=tuple(w for w in weights if w.params),
            mtp_weights=tuple(mtp),
        )


_Shape = tuple[str, int, int, int]  # name, rows, cols, count per layer


def _mlp(name: str, h: int, ffn: int, count: int, role: Role) -> list[Weight]:
    """SwiGLU MLP: gate and up ``(ffn, h)``, down ``(h, ffn)``."""
    return [
        Weight(f"{name}.gate_up", ffn, h, 2 * count, role),
        Weight(f"{name}.down", h, ffn, count, role),
    ]


def _attention(
    config: dict[str, Any], h: int, nq: int, nkv: int, mla: bool, model_type: str
) -> tuple[list[_Shape], int, int, int, int]:
    """Per-layer attention tensors and (kv_lora, rope, qk head dim, v head dim)."""
    if mla:
        kv_lora = int(_get(config, "kv_lora_rank"))
        rope = int(_get(config, "qk_rope_head_dim"))
        nope = int(_get(config, "qk_nope_head_dim"))
        v = int(_get(config, "v_head_dim"))
        q_lora = int(config.get("q_lora_rank") or 0)
        shapes: list[_Shape] = []
        if q_lora:
            shapes += [
                ("q_a_proj", q_lora, h, 1),
                ("q_b_proj", nq * (nope + rope), q_lora, 1),
                ("attn_norms", 1, q_lora, 1),
            ]
        else:
            shapes.append(("q_proj", nq * (nope + rope), h, 1))
        shapes += [
            ("kv_a_proj_with_mqa", kv_lora + rope, h, 1),
            ("attn_norms", 1, kv_lora, 1),
            ("kv_b_proj", nq * (nope + v), kv_lora, 1),
            ("o_proj", h, nq * v, 1),
        ]
        return shapes, kv_lora, rope, nope + rope, v
    hd = int(config.get("head_dim") or h // nq)
    shapes = [
        ("q_proj", nq * hd, h, 1),
        ("k_proj", nkv * hd, h, 1),
        ("v_proj", nkv * hd, h, 1),
        ("o_proj", h, nq * hd, 1),
    ]
    bias = config.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))
    if bias:
        shapes.append(("attn_norms", 1, (nq + 2 * nkv) * hd, 1))  # q, k, v biases
    if model_type.startswith("qwen3"):
        shapes.append(("attn_norms", 1, 2 * hd, 1))  # q_norm, k_norm
    return shapes, 0, 0, hd, hd


def _moe(config: dict[str, Any], layers: int) -> tuple[int, int, int, int, int, list[int]]:
    """(dense ffn, expert ffn, routed experts, top-k, shared ffn width, MoE layer ids)."""
    ffn = int(config.get("intermediate_size") or 0)
    n_experts = int(
        config.get("n_routed_experts")
        or config.get("num_experts")
        or config.get("num_local_experts")
        or 0
    )
    if not n_experts:
        return ffn, 0, 0, 0, 0, []
    expert_ffn = int(config.get("moe_intermediate_size") or ffn)
    top_k = int(_get(config, "num_experts_per_tok"))
    if "first_k_dense_replace" in config or "moe_layer_freq" in config:  # DeepSeek
        first = int(config.get("first_k_dense_replace") or 0)
        freq = int(config.get("moe_layer_freq") or 1)
        ids = [i for i in range(layers) if i >= first and i % freq == 0]
        shared = int(config.get("n_shared_experts") or 0) * expert_ffn
    else:  # Qwen-MoE, Mixtral
        step = int(config.get("decoder_sparse_step") or 1)
        dense_ids = set(config.get("mlp_only_layers") or [])
        ids = [i for i in range(layers) if i not in dense_ids and (i + 1) % step == 0]
        shared = int(config.get("shared_expert_intermediate_size") or 0)
    return ffn, expert_ffn, n_experts, top_k, shared, ids


# --------------------------------------------------------------------- presets
PRESETS: dict[str, str] = {
    "deepseek-v3.1": "deepseek-v3.1.json",
    "llama-3.1-8b": "llama-3.1-8b.json",
    "llama-3.1-70b": "llama-3.1-70b.json",
    "llama-3.1-405b": "llama-3.1-405b.json",
    "qwen3-235b-a22b": "qwen3-235b-a22b.json",
    "qwen2.5-7b": "qwen2.5-7b.json",
}
#: other names of the presets (same architecture: same plan)
ALIASES: dict[str, str] = {
    "deepseek-v3": "deepseek-v3.1",
    "deepseek-r1": "deepseek-v3.1",
    "deepseek-v3.1-base": "deepseek-v3.1",
}
_DISPLAY = {
    "deepseek-v3.1": "DeepSeek-V3.1",
    "llama-3.1-8b": "Llama-3.1-8B",
    "llama-3.1-70b": "Llama-3.1-70B",
    "llama-3.1-405b": "Llama-3.1-405B",
    "qwen3-235b-a22b": "Qwen3-235B-A22B",
    "qwen2.5-7b": "Qwen2.5-7B",
}


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by case-insensitive name (``deepseek-v3.1``), or a ``config.json`` path."""
    text = str(name_or_path)
    key = ALIASES.get(text.lower(), text.lower())
    if key in PRESETS:
        data = resources.files("ue8m0.plan") / "data" / "models" / PRESETS[key]
        return ModelSpec.from_config(json.loads(data.read_text("utf-8")), _DISPLAY[key])
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        known = ", ".join(sorted([*PRESETS, *ALIASES]))
        raise PlanError(f"unknown model {text!r}: not a preset ({known}) nor a config.json path")
    try:
        config = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PlanError(f"{path}: a config.json must hold a JSON object")
    config = config.get("text_config", config) if "hidden_size" not in config else config
    return ModelSpec.from_config(config, str(config.get("_name_or_path") or path.parent.name))
