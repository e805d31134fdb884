"""Tiny random Llama / Qwen2 / DeepSeek-V3 models saved as real Hugging Face checkpoint directories
(safetensors, config, a tokenizer built here): what serving engines such as vLLM load.

Nothing is downloaded: the tokenizer is a word-level vocabulary made from numbers, so every
engine that needs a tokenizer directory finds one, while tests pass token ids directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

#: the vocabulary size of every tiny model (a multiple of 128, as the linears' dims)
VOCAB = 512
#: the linears of a 2-layer tiny Llama after vLLM fuses them: qkv, o, gate_up, down per layer
FUSED_LINEARS = 8


def save_tokenizer(path: Path, vocab: int = VOCAB) -> None:
    """A word-level fast tokenizer of ``vocab`` ids (``<unk>``, ``<s>``, ``</s>``, then the
    words ``w3`` ... ), saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)


def _vocabulary(init_std: float) -> dict[str, object]:
    """What every tiny model's config shares: the word-level vocabulary, untied embeddings,
    the random init's scale."""
    return dict(
        vocab_size=VOCAB,
        tie_word_embeddings=False,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_causal_lm(
    path: Path,
    arch: str = "llama",
    *,
    kv_heads: int = 2,
    head_dim: int = 64,
    seed: int = 0,
    init_std: float = 0.02,
) -> Path:
    """A 2-layer model (hidden 256, intermediate 512, 4 heads of ``head_dim``) of ``arch``
    (``llama``: no biases; ``qwen2``: q/k/v biases), random with ``seed``, saved in BF16 with
    its tokenizer. Weights are normal with ``init_std`` (transformers' 0.02), biases too.
    Prompt logprobs then span about -7 to -5.5: FP8 quantization moves them by ~0.05 while
    vLLM and transformers agree on the same BF16 weights within ~0.006 (a wider output head,
    std 0.1, makes the two engines' BF16 arithmetic alone differ by 0.027)."""
    common = dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        **_vocabulary(init_std),
    )
    config: transformers.PretrainedConfig
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
        cls: type = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():  # biases start at zero: make them count
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, init_std)
    model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


def tiny_deepseek_v3(
    path: Path, *, seed: int = 0, init_std: float = 0.02, rope_gain: float = 8.0
) -> Path:
    """A 2-layer DeepSeek-V3 (MLA, hidden 256, 4 heads): layer 0 a dense MLP
    (``first_k_dense_replace`` 1), layer 1 an MoE of 4 routed experts (intermediate 128,
    noaux_tc routing) and one shared expert. All 4 experts are chosen for every token (one
    group, top 4): the router still weighs them, but no near-tie of two scores can route a
    token differently in two engines. The attention has the real model's latent dims, which
    vLLM's CPU MLA kernel requires (``kv_lora_rank`` 512 + ``qk_rope_head_dim`` 64 = 576 rows
    of ``kv_a_proj_with_mqa``: a partial fifth row of 128-blocks), and ``q_lora_rank`` 128, so
    ``q_a_proj`` exists and vLLM fuses the two into ``fused_qkv_a_proj``. Every other
    dimension is a multiple of 128. Random with ``seed``, saved in BF16 with the word-level
    tokenizer.

    The rope rows (the partial block of ``kv_a_proj_with_mqa`` and each head's rope rows of
    ``q_b_proj``) are multiplied by ``rope_gain``: at init scale the positional part of the
    attention barely moves the logprobs, so a misread scale of the partial block would not
    show; at 8 its scale is 2**3 times its neighbours'."""
    config = transformers.DeepseekV3Config(
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=1,
        topk_group=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=128,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        qk_nope_head_dim=64,
        v_head_dim=64,
        num_nextn_predict_layers=0,
        # DeepSeek-V3's own rope: YaRN, factor 40 over 4096 positions. (With a plain rope vLLM
        # 0.32 and transformers disagree by 0.66 on the BF16 model itself: docs/loaders.md)
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        topk_method="noaux_tc",  # as DeepSeek-V3's config.json says: vLLM reads these two
        scoring_func="sigmoid",  # (transformers' DeepseekV3 always routes this way)
        max_position_embeddings=163840,
        **_vocabulary(init_std),
    )
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(config)
    heads, rope = config.num_attention_heads, config.qk_rope_head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.kv_a_proj_with_mqa.weight[config.kv_lora_rank :] *= rope_gain
            layer.self_attn.q_b_proj.weight.view(heads, config.qk_head_dim, -1)[:, -rope:] *= (
                rope_gain
            )
    model.to(torch.bfloat16).save_pretrained(path)
    save_tokenizer(path)
    return path


def prompt_logprobs(path: Path, prompts: list[list[int]]) -> np.ndarray:
    """transformers' (CPU, BF16) logprob of each prompt's own token i given the tokens before
    it (i >= 1), per prompt: what vLLM's ``prompt_logprobs`` are compared with."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    logprobs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            lp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            logprobs.append(lp[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy())
    return np.array(logprobs)
