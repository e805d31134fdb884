"""Tiny random Llama / Qwen2 models saved as real Hugging Face checkpoint directories
(safetensors, config, a tokenizer built here): what serving engines such as vLLM load.

Nothing is downloaded: the tokenizer is a word-level vocabulary made from numbers, so every
engine that needs a tokenizer directory finds one, while tests pass token ids directly."""

from __future__ import annotations

from pathlib import Path

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
        vocab_size=VOCAB,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
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
