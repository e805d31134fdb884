"""DeepSeek-V4 presets and the FP4-experts format: counts and bytes against independent
computations from the shipped configs (transformers' own V4 model, or the formulas written out
here), never against numbers copied from the planner's output."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

from ue8m0.plan.chips import builtin_db
from ue8m0.plan.estimate import Workload, bytes_by_class, estimate, weight_bytes
from ue8m0.plan.models import Role
from ue8m0.plan.precision import FORMATS
from ue8m0.plan.presets import load_model, preset_config

DB = builtin_db()
FP4 = FORMATS["fp4-experts"]
FP8 = FORMATS["fp8"]


def fp8_bytes(rows: int, cols: int) -> int:
    """E4M3 elements plus one UE8M0 byte per 128x128 block."""
    return rows * cols + math.ceil(rows / 128) * math.ceil(cols / 128)


def test_fp4_experts_format_is_4_25_bits_per_weight() -> None:
    experts = FP4.experts
    assert experts is not None
    assert experts.bits_per_weight == 4 + 8 / 32 == 4.25
    # a routed expert w1 of V4-Flash: int8 [2048, 1024] packed nibbles + F8_E8M0 [2048, 64]
    assert experts.weight_bytes(2048, 4096) == 2048 * 4096 // 2 + 2048 * 4096 // 32
    assert FP4.for_experts(False) is FP4 and FP4.for_experts(True) is experts
    assert FP8.bits_per_weight == 8 + 8 / (128 * 128)


@pytest.mark.parametrize("key", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_v4_parameter_count_equals_transformers_model(key: str) -> None:
    config = preset_config(key)
    hf = {k: v for k, v in config.items() if not k.startswith("_")}
    hf.pop("quantization_config")
    with torch.device("meta"):
        model = DeepseekV4ForCausalLM(DeepseekV4Config(**hf))
    theirs = sum(p.numel() for p in model.parameters())
    spec = load_model(key)
    # transformers keeps the router bias as a buffer, and the hash table too (LOOKUP, not counted)
    router_bias = sum(w.params for w in spec.weights if w.name == "ffn.gate.bias")
    assert spec.total_params - router_bias == theirs


@pytest.mark.parametrize(
    ("key", "total", "active"),
    [
        ("deepseek-v4-flash", 284, 13),
        ("deepseek-v4-pro", 1600, 49),
        ("deepseek-v4.1-flash", 552, 16),
    ],
)
def test_v4_totals_near_the_model_cards(key: str, total: float, active: float) -> None:
    # model cards: 284B/13B, 1.6T/49B; V4.1 announcement: 552B, 16B active for output
    spec = load_model(key)
    assert spec.total_params / 1e9 == pytest.approx(total, rel=0.02)
    assert spec.active_params / 1e9 == pytest.approx(active, rel=0.07)


def _v4_attention_bytes(c: dict[str, Any]) -> int:
    """FP8 projections, BF16 compressors and indexer weights_proj, per the release."""
    h, d, nq, ql = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["q_lora_rank"]
    g, ol, ih, ihd = c["o_groups"], c["o_lora_rank"], c["index_n_heads"], c["index_head_dim"]
    per_layer = (
        fp8_bytes(ql, h)
        + fp8_bytes(nq * d, ql)
        + fp8_bytes(d, h)
        + fp8_bytes(g * ol, nq * d // g)
        + fp8_bytes(h, g * ol)
    )
    total = 0
    for r in c["compress_ratios"][: c["num_hidden_layers"]]:
        total += per_layer
        if r == 4:  # overlapping windows: 2 * head_dim; plus the indexer and its compressor
            total += 2 * (2 * 2 * d * h) + fp8_bytes(ih * ihd, ql) + 2 * ih * h
            total += 2 * (2 * 2 * ihd * h)
        elif r:
            total += 2 * (2 * d * h)
    return total


@pytest.mark.parametrize("key", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_v4_bytes_per_class_from_the_config(key: str) -> None:
    c = preset_config(key)
    spec = load_model(key)
    h, f, e, layers = (
        c["hidden_size"],
        c["moe_intermediate_size"],
        c["n_routed_experts"],
        c["num_hidden_layers"],
    )
    experts_fp4 = layers * e * 3 * (h * f // 2 + h * f // 32)
    experts_fp8 = layers * e * (2 * fp8_bytes(f, h) + fp8_bytes(h, f))
    shared = layers * (2 * fp8_bytes(f, h) + fp8_bytes(h, f))
    for fmt, routed in ((FP4, experts_fp4), (FP8, experts_fp8)):
        classes = bytes_by_class(spec, fmt)
        assert classes["routed_experts"] == routed
        assert classes["shared_experts"] == shared
        assert classes["attention"] == _v4_attention_bytes(c)
        assert classes["embeddings_head"] == 2 * 2 * c["vocab_size"] * h
        assert classes["dense_ffn"] == 0
        assert sum(classes.values()) == weight_bytes(spec, fmt)
    # the FP4 release is a bit over half the FP8 repack
    assert 0.52 < weight_bytes(spec, FP4) / weight_bytes(spec, FP8) < 0.56


def test_v41_flash_lookup_tables_and_experts_from_the_config() -> None:
    c = preset_config("deepseek-v4.1-flash")
    t = c["text_config"]
    spec = load_model("deepseek-v4.1-flash")
    classes = bytes_by_class(spec, FP4)
    # Engram tables: FP8 rows of engram_head_dim with a UE8M0 scale per 32
    dim = t["engram_head_dim"]
    assert classes["lookup_tables"] == sum(t["engram_num_embeddings"]) * (dim + dim // 32)
    h, f = t["hidden_size"], t["moe_intermediate_size"]
    n_experts = t["num_hidden_layers"] * t["n_routed_experts"]
    assert classes["routed_experts"] == n_experts * 3 * h * f * 17 // 32  # 4.25 bits
    assert spec.aux_params >= sum(t["engram_num_embeddings"]) * dim  # not in the total


def test_v4_flash_kv_cache_by_hand() -> None:
    c = preset_config("deepseek-v4-flash")
    spec = load_model("deepseek-v4-flash")
    ratios = c["compress_ratios"][: c["num_hidden_layers"]]
    d, ihd, w = c["head_dim"], c["index_head_dim"], c["sliding_window"]
    for t in (100, 8192, 1 << 20):
        by_hand = 2 * (
            len(ratios) * min(t, w) * d
            + sum(t / 4 * (d + ihd) for r in ratios if r == 4)
            + sum(t / 128 * d for r in ratios if r == 128)
        )
        assert spec.kv_bytes(t, "bf16") == pytest.approx(by_hand)
    # a decode step reads only index_topk compressed entries of each CSA layer
    t = 1 << 20
    csa = sum(r == 4 for r in ratios)
    unread = csa * (t / 4 - c["index_topk"]) * d * 2
    assert spec.kv_bytes(t) - spec.kv_read_bytes(t) == pytest.approx(unread)


@pytest.mark.parametrize("chip", ["h20", "h100"])
def test_hopper_runs_fp4_experts_weight_only_at_the_fp8_roof(chip: str) -> None:
    spec = load_model("deepseek-v4-flash")
    wl = Workload(batch=64, context=8192, num_chips=8)
    fp4 = estimate(spec, DB.get(chip), FP4, wl)
    fp8 = estimate(spec, DB.get(chip), FP8, wl)
    assert fp4.path.label == "fp8" and fp4.expert_path.label == "fp8 (w-only)"
    assert any("dequantized to FP8 in the kernel" in n for n in fp4.notes)
    assert fp4.decode is not None and fp8.decode is not None
    experts4 = next(op for op in fp4.decode.ops if op.name == "experts")
    experts8 = next(op for op in fp8.decode.ops if op.name == "experts")
    assert experts4.flops == experts8.flops
    assert experts8.bytes / experts4.bytes == pytest.approx((8 + 8 / 128**2) / 4.25, rel=1e-3)
    assert fp4.decode_tok_s is not None and fp8.decode_tok_s is not None
    assert fp4.decode_tok_s > fp8.decode_tok_s  # fewer bytes: a higher bound


@pytest.mark.parametrize(("chip", "label"), [("b200", "fp4"), ("mi355x", "fp4")])
def test_mx_chips_run_fp4_experts_natively(chip: str, label: str) -> None:
    spec = load_model("deepseek-v4-pro")
    est = estimate(spec, DB.get(chip), FP4, Workload(batch=1, context=8192))
    assert est.expert_path.label == label and not est.expert_path.weight_only
    assert est.memory_per_chip is not None and est.num_chips is not None
    assert est.memory_per_chip * est.num_chips == est.weight_bytes + est.kv_bytes


def test_ascend_and_a100_run_fp4_experts_weight_only_at_bf16() -> None:
    spec = load_model("deepseek-v4-flash")
    for chip in ("ascend910c", "a100"):
        est = estimate(spec, DB.get(chip), FP4, Workload())
        assert est.expert_path.label == "bf16 (w-only)"


def test_shared_experts_are_their_own_role() -> None:
    spec = load_model("deepseek-v4-flash")
    assert spec.params(Role.SHARED) == 43 * 3 * 4096 * 2048
    assert spec.params(Role.FFN) == 0
