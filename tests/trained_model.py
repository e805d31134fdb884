"""A tiny Llama trained here, in a few hundred CPU steps, on a synthetic language it learns
exactly, saved in BF16 as a Hugging Face checkpoint: a model whose greedy continuations are
confident (top-1 beats top-2 by several logits), so FP8 and BF16 greedy tokens can be compared.

The language: ``<s> MODE x0 x1 x2 ...`` where MODE is one of ``MODES`` tokens and each content
token follows from the one before by MODE's fixed random permutation. Predicting ``x(i+1)``
needs ``x(i)`` and the MODE token back at position 1, so attention matters, not only the
embeddings. Everything is seeded and training runs on one thread: the same weights on every run
of the same torch, whatever the core count."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from ckpt_models import save_tokenizer

#: token ids: 0-2 special (<unk>, <s>, </s>), then the modes, then the content tokens
VOCAB = 128
MODES = 4
FIRST_CONTENT = 3 + MODES
CONTENT = VOCAB - FIRST_CONTENT
#: training sequences: <s>, MODE, then SEQ_LEN - 2 content tokens
SEQ_LEN = 24
BATCH = 32
STEPS = 300
LR = 1e-2
WARMUP = 20
SEED = 0


def permutations() -> torch.Tensor:
    """[MODES, CONTENT]: mode m maps content index i to ``permutations()[m, i]``."""
    gen = torch.Generator().manual_seed(SEED)
    return torch.stack([torch.randperm(CONTENT, generator=gen) for _ in range(MODES)])


def sentence(mode: int, start: int, length: int) -> list[int]:
    """``<s>``, mode token ``mode``, then ``length`` content tokens from content index ``start``."""
    perm = permutations()[mode]
    ids, x = [1, 3 + mode], start
    for _ in range(length):
        ids.append(FIRST_CONTENT + x)
        x = int(perm[x])
    return ids


def _batch(gen: torch.Generator, perms: torch.Tensor) -> torch.Tensor:
    mode = torch.randint(0, MODES, (BATCH,), generator=gen)
    x = torch.randint(0, CONTENT, (BATCH,), generator=gen)
    columns = [torch.ones(BATCH, dtype=torch.long), 3 + mode]
    for _ in range(SEQ_LEN - 2):
        columns.append(FIRST_CONTENT + x)
        x = perms[mode, x]
    return torch.stack(columns, 1)


def config() -> transformers.LlamaConfig:
    """2 layers, hidden 128, intermediate 256, 2 heads of 64 (q/k/v/o 128x128): every linear is
    one or two 128x128 blocks, so ``ue8m0 quantize`` converts all of them to FP8."""
    return transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def train_tiny_llama(path: Path, steps: int = STEPS) -> Path:
    """Train (float32, AdamW, linear warmup then decay to zero) for ``steps`` batches of fresh
    sentences and save in BF16 with a tokenizer of ``VOCAB`` words. One thread: ~9 s for 300
    steps, where two threads on two busy cores spin-wait for each other (measured 6 to 46 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(path, steps)
    finally:
        torch.set_num_threads(threads)
    save_tokenizer(path, VOCAB)
    return path


def _train(path: Path, steps: int) -> None:
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(config())
    perms = permutations()
    gen = torch.Generator().manual_seed(SEED + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * max(0.0, 1.0 - s / steps)
    )
    model.train()
    for _ in range(steps):
        ids = _batch(gen, perms)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.to(torch.bfloat16).save_pretrained(path)
