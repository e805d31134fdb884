"""Model specs from Hugging Face ``config.json``: weight shapes, parameter counts, KV-cache bytes.

A :class:`ModelSpec` is built from a config dict (dense Llama/Qwen, GPT-2, MoE with or without
shared experts, DeepSeek MLA with its compressed KV latent, MTP layers; DeepSeek-V4 in
:mod:`ue8m0.plan.deepseek_v4`). Every count is derived from the list of weight tensors, never
typed in. Presets are the configs shipped under ``plan/data/models`` (:mod:`ue8m0.plan.presets`).

Parameter roles decide what a format quantizes and what a decode step reads:

- ``ATTENTION``, ``FFN`` (dense MLP), ``SHARED`` (shared experts), ``EXPERT`` (routed experts)
  are the linear weights of the decoder layers: quantized by FP8/MXFP4/INT8 plans.
- ``EMBEDDING``, ``HEAD``, ``ROUTER``, ``NORM`` (norms, biases, small mixers) stay in BF16, as in
  the DeepSeek FP8 checkpoints. ``LOOKUP`` (hash-routing and Engram tables) and ``VISION`` (a
  vision tower) are held in memory; a text decode step reads one embedding row per token and
  none of the lookup or vision weights, all of the rest.

A tensor the release stores in a fixed format whatever the plan (DeepSeek-V4's FP32 norms and
mixers, BF16 compressors) names it in :attr:`Weight.stored` (a key of
:data:`ue8m0.plan.precision.STORED`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from ue8m0.plan.errors import PlanError
from ue8m0.plan.hybrid import HybridAttention


class Role(enum.Enum):
    """What a weight tensor is for (see the module docstring)."""

    EMBEDDING = "embedding"
    HEAD = "head"
    ATTENTION = "attention"
    FFN = "ffn"
    SHARED = "shared_expert"
    EXPERT = "expert"
    ROUTER = "router"
    NORM = "norm"
    LOOKUP = "lookup"
    VISION = "vision"

    @property
    def quantizable(self) -> bool:
        """Linear weights of the decoder layers: the ones a low-precision plan stores in FP8/FP4."""
        return self in (Role.ATTENTION, Role.FFN, Role.SHARED, Role.EXPERT)


@dataclass(frozen=True)
class Weight:
    """``count`` tensors of shape ``(rows, cols)`` (a vector is ``(1, n)``) with one role;
    ``stored`` names the format the release keeps it in whatever the plan ("" = the plan's)."""

    name: str
    rows: int
    cols: int
    count: int
    role: Role
    stored: str = ""

    @property
    def params(self) -> int:
        """Number of parameters of all ``count`` tensors."""
        return self.rows * self.cols * self.count


class Attention(enum.Enum):
    """Attention kinds and their KV cache per token and layer.

    - ``GQA`` (incl. MHA/MQA): ``2 · n_kv_heads · head_dim`` elements (K and V).
    - ``MLA`` (DeepSeek): ``kv_lora_rank + qk_rope_head_dim`` elements (the compressed latent and
      the shared RoPE key), shared by all heads.
    - ``HYBRID`` (DeepSeek-V4): a sliding window plus compressed entries, see
      :mod:`ue8m0.plan.hybrid`.
    """

    GQA = "gqa"
    MLA = "mla"
    HYBRID = "hybrid"


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
    hybrid: HybridAttention | None = None
    notes: tuple[str, ...] = ()

    # ----------------------------------------------------------------- parameters
    def params(self, *roles: Role) -> int:
        """Parameters of the main model (no MTP), restricted to ``roles`` when given."""
        return sum(w.params for w in self.weights if not roles or w.role in roles)

    @property
    def total_params(self) -> int:
        """Parameters of the main model as published totals count them: MTP layers, lookup
        tables (hash routing, Engram) and a vision tower excluded (:attr:`aux_params`)."""
        return self.params() - self.aux_params

    @property
    def aux_params(self) -> int:
        """Parameters of lookup tables and a vision tower (held in memory, not in totals)."""
        return self.params(Role.LOOKUP, Role.VISION)

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
        if self.hybrid is not None:
            return round(self._hybrid(kv_format).bytes_per_token(kv_format))
        if kv_format == "bf16":
            return 2 * self.kv_elements_per_token
        if kv_format == "fp8":
            if self.attention is Attention.MLA:
                per_layer = self.kv_lora_rank + 4 * math.ceil(self.kv_lora_rank / 128)
                return self.layers * (per_layer + 2 * self.rope_dim)
            return self.kv_elements_per_token
        raise PlanError(f"unknown KV-cache format {kv_format!r} (use bf16 or fp8)")

    def _hybrid(self, kv_format: str) -> HybridAttention:
        if kv_format not in ("bf16", "fp8"):
            raise PlanError(f"unknown KV-cache format {kv_format!r} (use bf16 or fp8)")
        assert self.hybrid is not None
        return self.hybrid

    def kv_bytes(self, context: int, kv_format: str = "bf16") -> float:
        """KV-cache bytes one sequence of ``context`` tokens holds."""
        if self.hybrid is not None:
            return self._hybrid(kv_format).stored_bytes(context, kv_format)
        return float(context * self.kv_bytes_per_token(kv_format))

    def kv_read_bytes(self, context: int, kv_format: str = "bf16") -> float:
        """KV-cache bytes one decode step reads for one sequence (all of it but for V4's top-k)."""
        if self.hybrid is not None:
            return self._hybrid(kv_format).read_bytes(context, kv_format)
        return self.kv_bytes(context, kv_format)

    def decode_attention_flops(self, context: int) -> float:
        """Attention FLOPs of one decode token against ``context`` keys."""
        if self.hybrid is not None:
            return self.hybrid.decode_flops(context)
        return self.attention_flops(context, absorbed=True)

    def prefill_attention_flops(self, tokens: int) -> float:
        """Attention FLOPs of a causal prompt of ``tokens`` tokens."""
        if self.hybrid is not None:
            return self.hybrid.prefill_flops(tokens)
        return self.attention_flops(1, absorbed=False) * tokens * (tokens + 1) / 2

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
        """Build a spec from a Hugging Face ``config.json`` dict (GPT-2 keys included)."""
        if "n_embd" in config and "hidden_size" not in config:
            return _gpt2(config, name)
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
                    out += _mlp("shared_experts", h, n_shared, moe_count, Role.SHARED)
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


def _gpt2(config: dict[str, Any], name: str | None) -> ModelSpec:
    """GPT-2 (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``, ``n_inner``): learned position
    embeddings, fused ``c_attn (3h, h)``, a GELU MLP ``c_fc (inner, h)``, ``c_proj (h, inner)``
    (``inner`` defaults to ``4h``), biases on every linear, LayerNorms with bias, head tied to the
    token embedding unless ``tie_word_embeddings`` is false."""
    h = int(_get(config, "n_embd"))
    layers = int(_get(config, "n_layer"))
    heads = int(_get(config, "n_head"))
    vocab = int(_get(config, "vocab_size"))
    positions = int(_get(config, "n_positions"))
    inner = int(config.get("n_inner") or 4 * h)
    weights = [
        Weight("wte", vocab, h, 1, Role.EMBEDDING),
        Weight("wpe", positions, h, 1, Role.EMBEDDING),
        Weight("attn.c_attn", 3 * h, h, layers, Role.ATTENTION),
        Weight("attn.c_proj", h, h, layers, Role.ATTENTION),
        Weight("mlp.c_fc", inner, h, layers, Role.FFN),
        Weight("mlp.c_proj", h, inner, layers, Role.FFN),
        Weight("biases", 1, 3 * h + h + inner + h, layers, Role.NORM),
        Weight("layer_norms", 1, 2 * h, 2 * layers, Role.NORM),
        Weight("ln_f", 1, 2 * h, 1, Role.NORM),
    ]
    if not config.get("tie_word_embeddings", True):
        weights.append(Weight("lm_head", vocab, h, 1, Role.HEAD))
    return ModelSpec(
        name=name or str(config.get("_name_or_path") or config.get("model_type") or "gpt2"),
        hidden=h,
        layers=layers,
        vocab=vocab,
        attention=Attention.GQA,
        q_heads=heads,
        kv_heads=heads,
        head_dim=h // heads,
        v_head_dim=h // heads,
        kv_lora_rank=0,
        rope_dim=0,
        moe_layers=0,
        experts=0,
        experts_per_token=0,
        max_context=positions,
        weights=tuple(weights),
    )
