"""A tiny random DeepSeek-V4 model built by transformers, written as a BF16 checkpoint in
DeepSeek-V4's own layout (its tensor names, its config.json keys).

transformers 5.24 reads DeepSeek's names through the ``"deepseek_v4"`` entry of
``transformers/conversion_mapping.py`` (renames applied to every checkpoint key, then two
``WeightConverter`` merges), and DeepSeek's ``.scale`` through the FP8 quantizer's extra rename
``^(.+)\\.scale -> \\1.weight_scale_inv`` (``transformers/quantizers/quantizer_finegrained_fp8.py``,
``update_weight_conversions``). :func:`deepseek_name` inverts that mapping; what was found:

* the checkpoint has no ``model.`` prefix (``embed.weight``, ``layers.L.*``, ``norm.weight``,
  ``hc_head_*``); transformers adds its ``base_model_prefix`` itself;
* leaves: ``embed`` -> ``embed_tokens``, ``head`` -> ``lm_head`` (outside ``model.``),
  ``hc_head_{fn,base,scale}`` -> ``hc_head.hc_{fn,base,scale}``;
* per layer: ``.attn.`` -> ``.self_attn.``, ``.ffn.`` -> ``.mlp.``, ``attn_norm`` ->
  ``input_layernorm``, ``ffn_norm`` -> ``post_attention_layernorm``, ``hc_attn_{fn,base,scale}``
  -> ``attn_hc.{fn,base,scale}`` (``hc_ffn_*`` -> ``ffn_hc.*``), ``attn_sink`` -> ``sinks``,
  ``wq_a`` -> ``q_a_proj``, ``q_norm`` -> ``q_a_norm``, ``attn.wq_b`` -> ``self_attn.q_b_proj``,
  ``wkv`` -> ``kv_proj``, ``wgate`` -> ``gate_proj``, ``wo_a``/``wo_b`` -> ``o_a_proj``/``o_b_proj``,
  ``.norm.`` -> ``.kv_norm.`` (the compressors' norm; the attention's own ``kv_norm`` keeps its
  name), ``.ape`` -> ``.position_bias``;
* the indexer moves under the compressor: ``attn.indexer.compressor.*`` ->
  ``self_attn.compressor.indexer.*``, ``attn.indexer.wq_b`` -> ``...compressor.indexer.q_b_proj``,
  ``attn.indexer.weights_proj`` -> ``...compressor.indexer.scorer.weights_proj``;
* router: ``ffn.gate.weight`` -> ``mlp.gate.weight``, ``ffn.gate.bias`` ->
  ``mlp.gate.e_score_correction_bias``, ``ffn.gate.tid2eid`` -> ``mlp.gate.tid2eid`` (hash layers);
* shared expert: ``w1``/``w2``/``w3`` -> ``gate_proj``/``down_proj``/``up_proj``;
* routed experts are merged: ``experts.E.w1.weight`` and ``experts.E.w3.weight`` ->
  ``experts.gate_up_proj[E]`` (``MergeModulelist(dim=0)`` then ``Concatenate(dim=1)``: gate rows
  first, then up rows, as ``DeepseekV4Experts._apply_gate`` chunks them), ``experts.E.w2.weight``
  -> ``experts.down_proj[E]``.

transformers' own ``save_pretrained`` does not write this layout: its reversal keeps the ``model.``
prefix, leaves ``model.embed_tokens.weight`` and ``model.hc_head.*`` unrenamed (their forward
renames are anchored at ``^``) and writes the attention's ``kv_norm`` as ``attn.norm`` (the reverse
of ``.norm.`` -> ``.kv_norm.``); transformers reads both, DeepSeek's loaders do not.

Dtypes follow transformers' own split: the modules in ``_keep_in_fp32_modules_strict`` (norms,
hyper-connections, sinks, ``ape``, the router bias) are F32, every matrix BF16, ``tid2eid`` I64
(transformers' buffer dtype; DeepSeek's reference code declares it int32: an I32 ``tid2eid`` loads
as int64 from a plain checkpoint but stays int32 under transformers' FP8 dequantizing load, same
values).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file

#: config.json as DeepSeek-V4 releases write it (their keys: ``compress_ratios`` per layer,
#: ``num_hash_layers``, ``qk_rope_head_dim``, ``rope_scaling``), shrunk: 3 layers covering the
#: three attention kinds (sliding only, CSA with indexer at ratio 4, HCA at ratio 128), a hash-routed
#: layer and two top-k routed ones, 4 routed experts + 1 shared; every matrix a multiple of 128
#: on both sides, so FP8 128x128 blocks and FP4 groups of 32 fit exactly.
RELEASE_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "torch_dtype": "bfloat16",
    "vocab_size": 256,
    "hidden_size": 256,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 128,
    "qk_rope_head_dim": 64,
    "q_lora_rank": 128,
    "o_groups": 2,
    "o_lora_rank": 128,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.5,
    "swiglu_limit": 10.0,
    "hc_mult": 2,
    "hc_sinkhorn_iters": 3,
    "hc_eps": 1e-6,
    "index_n_heads": 2,
    "index_head_dim": 128,
    "index_topk": 4,
    "sliding_window": 8,
    "compress_ratios": [0, 4, 128],
    "compress_rope_theta": 160000.0,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 16,
        "beta_fast": 32,
        "beta_slow": 1,
        "original_max_position_embeddings": 65536,
    },
    "num_hash_layers": 1,
    "num_nextn_predict_layers": 0,
    "max_position_embeddings": 1048576,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "initializer_range": 0.02,
}

#: transformers' name -> DeepSeek's, outside the layers (transformers' ``model.`` prefix removed)
_TOP: dict[str, str] = {
    "embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "norm.weight": "norm.weight",
    **{f"hc_head.hc_{p}": f"hc_head_{p}" for p in ("fn", "base", "scale")},
}

#: the same inside ``layers.L.``
_LAYER: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    **{f"{hc}_hc.{p}": f"hc_{hc}_{p}" for hc in ("attn", "ffn") for p in ("fn", "base", "scale")},
    "self_attn.sinks": "attn.attn_sink",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_norm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_proj.weight": "attn.wkv.weight",
    "self_attn.kv_norm.weight": "attn.kv_norm.weight",
    "self_attn.o_a_proj.weight": "attn.wo_a.weight",
    "self_attn.o_b_proj.weight": "attn.wo_b.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "attn.indexer.weights_proj.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "attn.indexer.wq_b.weight",
    # the attention's compressor, and the indexer's own one (moved under the former)
    **{
        f"self_attn.compressor.{hf}{leaf}": f"attn.{ds}{new}"
        for hf, ds in (("", "compressor."), ("indexer.", "indexer.compressor."))
        for leaf, new in (
            ("kv_proj.weight", "wkv.weight"),
            ("gate_proj.weight", "wgate.weight"),
            ("kv_norm.weight", "norm.weight"),
            ("position_bias", "ape"),
        )
    },
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
    "mlp.gate.tid2eid": "ffn.gate.tid2eid",
    **{
        f"mlp.shared_experts.{hf}.weight": f"ffn.shared_experts.{w}.weight"
        for hf, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3"))
    },
}

#: the merged routed experts, split back per expert
_EXPERTS = re.compile(r"layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")


def deepseek_name(name: str) -> str:
    """DeepSeek-V4's name for transformers' (non-expert) tensor ``name`` (KeyError if none)."""
    bare = name.removeprefix("model.")
    found = re.fullmatch(r"layers\.(\d+)\.(.+)", bare)
    if found is None:
        return _TOP[bare]
    return f"layers.{found[1]}.{_LAYER[found[2]]}"


def deepseek_tensors(state: dict[str, torch.Tensor], intermediate: int) -> dict[str, torch.Tensor]:
    """transformers' state dict under DeepSeek-V4's names, the merged experts split per expert."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        found = _EXPERTS.fullmatch(name.removeprefix("model."))
        if found is None:
            out[deepseek_name(name)] = tensor
            continue
        layer, kind = found.groups()
        for e, per_expert in enumerate(tensor):
            base = f"layers.{layer}.ffn.experts.{e}"
            if kind == "gate_up_proj":
                out[f"{base}.w1.weight"] = per_expert[:intermediate]
                out[f"{base}.w3.weight"] = per_expert[intermediate:]
            else:
                out[f"{base}.w2.weight"] = per_expert
    return {name: t.contiguous().clone() for name, t in sorted(out.items())}


def build_model(root: Path, seed: int = 0) -> transformers.PreTrainedModel:
    """A random tiny V4 model from :data:`RELEASE_CONFIG` (BF16 matrices, F32 where transformers
    keeps F32). Parameters transformers initialises to constants (sinks, ``ape``, router bias,
    hyper-connection bases, norms, ``tid2eid``) get random values too, so a swapped or dropped
    tensor changes the logits."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(RELEASE_CONFIG, indent=2))
    config = transformers.AutoConfig.from_pretrained(root)
    torch.manual_seed(seed)
    model = transformers.DeepseekV4ForCausalLM._from_config(config, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", ".scale", "hc_scale")):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith(("sinks", "position_bias", ".base", "hc_base")):
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
            elif name.endswith("tid2eid"):
                n_experts = config.n_routed_experts
                ranks = torch.rand((buf.shape[0], n_experts), generator=gen).argsort(dim=1)
                buf.copy_(ranks[:, : buf.shape[1]])
    return model.eval()


def write_checkpoint(root: Path, seed: int = 0) -> transformers.PreTrainedModel:
    """:func:`build_model`, saved under ``root`` as a BF16 checkpoint in DeepSeek-V4's layout
    (one shard, config.json); returns the model."""
    model = build_model(root, seed)
    state = model.state_dict()
    tensors = deepseek_tensors(state, model.config.moe_intermediate_size)
    tensors = {
        name: t.to(torch.int64) if name.endswith("tid2eid") else t for name, t in tensors.items()
    }
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    return model
