"""DeepSeek-V4 (``model_type`` ``deepseek_v4``) and V4.1 (``deepseek_v41``) configs as weight lists.

Tensor shapes follow DeepSeek's released ``inference/model.py`` (names in parentheses), dtypes
follow the release (``quantization_config`` FP8 E4M3 with UE8M0 block scales; routed experts FP4
under ``expert_dtype: "fp4"``; what the release keeps in another format is :attr:`Weight.stored`):

- attention, FP8: ``wq_a (q_lora, h)``, ``wq_b (n_q·d, q_lora)``, ``wkv (d, h)``,
  ``wo_a (g·o_lora, n_q·d/g)`` (grouped output projection), ``wo_b (h, g·o_lora)``; the indexer's
  ``wq_b (index_heads·index_d, q_lora)``; kept BF16: the compressors' ``wkv``/``wgate``
  (``coff·d, h``, ``coff = 2`` for the overlapping ratio-4 windows) and the indexer's
  ``weights_proj (index_heads, h)``;
- FP32: every RMSNorm, ``attn_sink (n_q)``, the compressors' ``ape (r, coff·d)``, the
  hyper-connection mixers ``hc_{attn,ffn}_fn ((2+n_hc)·n_hc, n_hc·h)`` with ``_base`` and
  ``_scale``, ``hc_head_*``, the router bias; BF16: ``embed``, ``head``, the router ``gate``;
  I64: the hash-routing table ``tid2eid (vocab, k)`` of the first ``num_hash_layers`` layers;
- MoE every layer: ``E`` routed experts and ``n_shared`` shared experts of width
  ``moe_intermediate_size`` (``w1, w3 (f, h)``, ``w2 (h, f)``).

V4.1 (nested ``text_config``): a compressor only on ``kv_source_layer_ids`` (shared by the layers
after it), an indexer key projection ``wk (index_d, d)`` there, ``wq_b``/``weights_proj`` on
``index_source_layer_ids``, no hash layers, a second router bias for image tokens, Engram n-gram
tables (``engram_num_embeddings[i] × engram_head_dim`` FP8 with a UE8M0 scale per 32, held in
memory, a few rows read per token) and a vision tower. What is approximated is listed in
:attr:`ModelSpec.notes`.
"""

from __future__ import annotations

from typing import Any

from ue8m0.plan.errors import PlanError
from ue8m0.plan.hybrid import HybridAttention
from ue8m0.plan.models import Attention, ModelSpec, Role, Weight

V4_TYPES = ("deepseek_v4", "deepseek_v41")


def is_v4(config: dict[str, Any]) -> bool:
    """Whether ``config`` is a DeepSeek-V4 or V4.1 config."""
    return str(config.get("model_type", "")) in V4_TYPES


def _int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if value is None:
        raise PlanError(f"config.json lacks {key!r} (DeepSeek-V4)")
    return int(value)


def _compressor(name: str, d: int, h: int, r: int, count: int) -> list[Weight]:
    coff = 2 if r == 4 else 1
    out = [
        Weight(f"{name}.wkv", coff * d, h, count, Role.ATTENTION, "bf16"),
        Weight(f"{name}.ape", r, coff * d, count, Role.NORM, "f32"),
        Weight(f"{name}.norm", 1, d, count, Role.NORM, "f32"),
    ]
    if r > 1:
        out.append(Weight(f"{name}.wgate", coff * d, h, count, Role.ATTENTION, "bf16"))
    return out


class _Shape:
    """The dimensions of one V4 text config."""

    def __init__(self, c: dict[str, Any]) -> None:
        self.h = _int(c, "hidden_size")
        self.layers = _int(c, "num_hidden_layers")
        self.nq = _int(c, "num_attention_heads")
        self.d = _int(c, "head_dim")
        self.rope = _int(c, "qk_rope_head_dim")
        self.q_lora = _int(c, "q_lora_rank")
        self.groups = _int(c, "o_groups")
        self.o_lora = _int(c, "o_lora_rank")
        self.index_heads = _int(c, "index_n_heads")
        self.index_d = _int(c, "index_head_dim")
        self.topk = _int(c, "index_topk")
        self.window = _int(c, "sliding_window")
        self.hc = int(c.get("hc_mult") or 1)
        self.experts = _int(c, "n_routed_experts")
        self.k = _int(c, "num_experts_per_tok")
        self.ffn = _int(c, "moe_intermediate_size")
        self.shared = int(c.get("n_shared_experts") or 0)
        self.vocab = _int(c, "vocab_size")
        ratios = list(c.get("compress_ratios") or [])
        if len(ratios) < self.layers:
            raise PlanError(
                f"config.json: compress_ratios has {len(ratios)} entries for {self.layers} layers"
            )
        self.ratios = tuple(int(r) for r in ratios)

    def block(self, layer: int, v41: bool, c: dict[str, Any], count: int = 1) -> list[Weight]:
        """The weights of decoder layer ``layer`` (``count`` copies)."""
        h, d, nq, ql = self.h, self.d, self.nq, self.q_lora
        mix = (2 + self.hc) * self.hc
        r = self.ratios[layer] if layer < len(self.ratios) else 0
        out = [
            Weight("attn.wq_a", ql, h, count, Role.ATTENTION),
            Weight("attn.wq_b", nq * d, ql, count, Role.ATTENTION),
            Weight("attn.wkv", d, h, count, Role.ATTENTION),
            Weight(
                "attn.wo_a", self.groups * self.o_lora, nq * d // self.groups, count, Role.ATTENTION
            ),
            Weight("attn.wo_b", h, self.groups * self.o_lora, count, Role.ATTENTION),
            Weight("attn.norms+sink", 1, ql + d + nq, count, Role.NORM, "f32"),
            Weight("layer_norms", 1, h, 2 * count, Role.NORM, "f32"),
            Weight("hc_fn", mix, self.hc * h, 2 * count, Role.NORM, "f32"),
            Weight("hc_base+scale", 1, mix + 3, 2 * count, Role.NORM, "f32"),
            Weight("ffn.gate", self.experts, h, count, Role.ROUTER),
            Weight("ffn.shared_experts.w1+w3", self.shared * self.ffn, h, 2 * count, Role.SHARED),
            Weight("ffn.shared_experts.w2", h, self.shared * self.ffn, count, Role.SHARED),
            Weight("ffn.experts.w1+w3", self.ffn, h, 2 * self.experts * count, Role.EXPERT),
            Weight("ffn.experts.w2", h, self.ffn, self.experts * count, Role.EXPERT),
        ]
        ix, iw = self.index_d, self.index_heads * self.index_d
        if not v41:
            if r:
                out += _compressor("attn.compressor", d, h, r, count)
            if r == 4:
                out += [
                    Weight("attn.indexer.wq_b", iw, ql, count, Role.ATTENTION),
                    Weight(
                        "attn.indexer.weights_proj",
                        self.index_heads,
                        h,
                        count,
                        Role.ATTENTION,
                        "bf16",
                    ),
                ]
                out += _compressor("attn.indexer.compressor", ix, h, r, count)
            if layer < int(c.get("num_hash_layers") or 0):
                out.append(
                    Weight("ffn.gate.tid2eid", self.vocab, self.k, count, Role.LOOKUP, "i64")
                )
            else:
                out.append(Weight("ffn.gate.bias", 1, self.experts, count, Role.ROUTER, "f32"))
            return out
        if layer in c.get("kv_source_layer_ids", ()):
            out += _compressor("attn.compressor", d, h, r, count)
            out += [
                Weight("attn.indexer.wk", ix, d, count, Role.ATTENTION),
                Weight("attn.indexer.k_norm", 1, ix, count, Role.NORM, "f32"),
            ]
        if layer in c.get("index_source_layer_ids", ()):
            out += [
                Weight("attn.indexer.wq_b", iw, ql, count, Role.ATTENTION),
                Weight(
                    "attn.indexer.weights_proj", self.index_heads, h, count, Role.ATTENTION, "bf16"
                ),
            ]
        out.append(Weight("ffn.gate.bias+bias_vl", 1, 2 * self.experts, count, Role.ROUTER, "f32"))
        engram = list(c.get("engram_layer_ids") or ())
        if layer in engram:
            rows = int(c["engram_num_embeddings"][engram.index(layer)])
            dim = _int(c, "engram_head_dim")
            out.append(Weight("engram.embed", rows, dim, count, Role.LOOKUP, "mxfp8"))
        return out


def _hybrid(s: _Shape, v41: bool, c: dict[str, Any]) -> HybridAttention:
    ratios = s.ratios[: s.layers]
    if not v41:
        kv = tuple(r > 0 for r in ratios)
        index = tuple(r == 4 for r in ratios)
        topk = tuple(s.topk if r == 4 else None for r in ratios)
        scan: tuple[int | None, ...] = (None,) * s.layers
    else:
        kv_ids = set(c.get("kv_source_layer_ids") or ())
        ix_ids = set(c.get("index_source_layer_ids") or ())
        kv = tuple(i in kv_ids for i in range(s.layers))
        index = tuple(i in ix_ids for i in range(s.layers))
        topk = tuple(s.topk if r else None for r in ratios)
        cand = c.get("candidate_source_layer_id")
        cap = int(c.get("candidate_topk_blocks") or 0) * int(c.get("candidate_block_size") or 0)
        scan = tuple(
            cap if cand is not None and cap and i > int(cand) else None for i in range(s.layers)
        )
    return HybridAttention(
        ratios=ratios,
        kv_source=kv,
        index_source=index,
        topk=topk,
        index_scan=scan,
        window=s.window,
        head_dim=s.d,
        rope_dim=s.rope,
        index_head_dim=s.index_d,
        index_heads=s.index_heads,
        q_heads=s.nq,
    )


def _vision(v: dict[str, Any]) -> list[Weight]:
    h = int(v.get("hidden_size") or 0)
    n = int(v.get("num_hidden_layers") or 0)
    inner = int(v.get("intermediate_size") or 4 * h)
    if not h or not n:
        return []
    return [
        Weight("vision.attn.wqkv", 3 * h, h, n, Role.VISION, "bf16"),
        Weight("vision.attn.proj", h, h, n, Role.VISION, "bf16"),
        Weight("vision.mlp", inner, h, 3 * n, Role.VISION, "bf16"),
        Weight("vision.norms", 1, h, 2 * n, Role.VISION, "f32"),
    ]


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a DeepSeek-V4 / V4.1 ``config.json`` dict."""
    v41 = str(config.get("model_type")) == "deepseek_v41"
    c = dict(config.get("text_config") or config) if v41 else config
    s = _Shape(c)
    weights: list[Weight] = []
    for layer in range(s.layers):
        weights += s.block(layer, v41, c)
    weights += [
        Weight("embed", s.vocab, s.h, 1, Role.EMBEDDING),
        Weight("head", s.vocab, s.h, 1, Role.HEAD),
        Weight("norm", 1, s.h, 1, Role.NORM, "f32"),
        Weight("hc_head_fn", s.hc, s.hc * s.h, 1, Role.NORM, "f32"),
        Weight("hc_head_base+scale", 1, s.hc + 1, 1, Role.NORM, "f32"),
    ]
    notes = []
    if v41:
        weights += _vision(dict(config.get("vision_config") or {}))
        notes += [
            "V4.1: KV sharing across layers modelled from kv_source/index_source ids "
            "(not checked against a reference implementation)",
            "V4.1: Engram gating/projection weights, patch embedding, aligner and DSpark heads "
            "not counted; its dense FP8 uses 32x32 scale blocks (planned as 128x128: +0.09 % "
            "scale bytes ignored)",
        ]
    n_mtp = int(c.get("num_nextn_predict_layers") or 0)
    mtp: list[Weight] = []
    for i in range(n_mtp):
        mtp += s.block(s.layers + i, v41, {**c, "num_hash_layers": 0, "engram_layer_ids": []})
        mtp.append(Weight("mtp.e_proj+h_proj", s.h, s.h, 2, Role.ATTENTION))
    return ModelSpec(
        name=name,
        hidden=s.h,
        layers=s.layers,
        vocab=s.vocab,
        attention=Attention.HYBRID,
        q_heads=s.nq,
        kv_heads=1,
        head_dim=s.d,
        v_head_dim=s.d,
        kv_lora_rank=0,
        rope_dim=s.rope,
        moe_layers=s.layers,
        experts=s.experts,
        experts_per_token=s.k,
        max_context=int(c.get("max_position_embeddings") or 0),
        weights=tuple(w for w in weights if w.params),
        mtp_weights=tuple(w for w in mtp if w.params),
        hybrid=_hybrid(s, v41, c),
        notes=tuple(notes),
    )
