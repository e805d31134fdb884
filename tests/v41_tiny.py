"""A tiny DeepSeek-V4.1-Flash-shaped checkpoint, written with numpy: every scaled tensor kind the
release ships, under its own names, dtypes and grid shapes, shrunk.

What it copies from the release (sources in docs/deepseek-v4.md, section V4.1):

* ``config.json``: ``model_type deepseek_v41``, the text model's keys nested under
  ``text_config`` (``engram_layer_ids``, ``engram_head_dim``, ...), a ``vision_config``, and the
  top-level ``quantization_config {quant_method fp8, activation_scheme dynamic,
  weight_block_size [32, 32], scale_fmt ue8m0, expert_dtype fp4}`` -- no ``fmt`` key and no
  top-level ``expert_dtype``;
* dense FP8 weights (``attn.wq_a``, ``attn.wo_a``, shared experts, DSpark's ``mtp.0.main_proj``,
  ``engram.wkv``): ``F8_E4M3 [out, in]`` with ``F8_E8M0 .scale [ceil(out/32), ceil(in/32)]``;
* routed experts (``layers.L`` and ``mtp.N``): packed FP4 ``I8 [out, in/2]`` with ``F8_E8M0
  [out, in/32]``;
* the Engram table ``layers.L.engram.embed.weight``: ``F8_E4M3 [rows, head_dim]`` with ``F8_E8M0
  .scale [rows, head_dim/32]`` -- one scale per row per 32 columns, not the declared 32x32;
* unscaled: BF16 embeddings, head, router, ``attn.indexer.wk``, vision tower and aligner; F32
  norms, hyper-connections, router biases (``gate.bias``, ``gate.bias_vl``) and Engram's
  ``q_weight`` / ``k_weight`` (names without ``.weight``).

Dimensions are multiples of 32 except where a partial block or a table row count is the point:
``attn.wo_a`` is ``[96, 80]`` (a partial column block), the Engram table has 100 rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ckpt_fixtures import write_checkpoint

E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu
BF16 = ml_dtypes.bfloat16
#: the declared dense block and the FP4 / Engram group
BLOCK = 32
HIDDEN = 64
ENGRAM_ROWS = 100
ENGRAM_DIM = 64
ENGRAM_LAYER = "layers.1.engram.embed"

RELEASE_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV41ForCausalLM"],
    "model_type": "deepseek_v41",
    "dtype": "bfloat16",
    "text_config": {
        "model_type": "deepseek_v41_text",
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_nextn_predict_layers": 1,
        "n_routed_experts": 2,
        "moe_intermediate_size": 64,
        "engram_layer_ids": [1],
        "engram_num_embeddings": [ENGRAM_ROWS],
        "engram_head_dim": ENGRAM_DIM,
        "num_hash_layers": 0,
    },
    "vision_config": {"model_type": "deepseek_v41_vision", "hidden_size": 32},
    "quantization_config": {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [BLOCK, BLOCK],
        "scale_fmt": "ue8m0",
        "expert_dtype": "fp4",
    },
}


def _fp8(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    codes = rng.integers(0, 0x7F, shape, dtype=np.uint8)  # finite codes, both signs below
    codes |= rng.integers(0, 2, shape, dtype=np.uint8) << 7
    return codes.view(E4M3)


def _e8m0(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(110, 135, shape, dtype=np.uint8).view(E8M0)


def _dense(rng: np.random.Generator, name: str, out: int, n_in: int) -> dict[str, np.ndarray]:
    grid = (-(-out // BLOCK), -(-n_in // BLOCK))
    return {f"{name}.weight": _fp8(rng, (out, n_in)), f"{name}.scale": _e8m0(rng, grid)}


def _fp4(rng: np.random.Generator, name: str, out: int, n_in: int) -> dict[str, np.ndarray]:
    packed = rng.integers(0, 256, (out, n_in // 2), dtype=np.uint8).view(np.int8)
    return {f"{name}.weight": packed, f"{name}.scale": _e8m0(rng, (out, n_in // BLOCK))}


def _plain(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def release_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of the tiny V4.1 checkpoint, by name."""
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {
        "embed.weight": _plain(rng, (128, HIDDEN), BF16),
        "head.weight": _plain(rng, (128, HIDDEN), BF16),
        "norm.weight": _plain(rng, (HIDDEN,), np.float32),
        "vision.blocks.0.attn.wqkv.weight": _plain(rng, (96, 32), BF16),
        "aligner.w1.weight": _plain(rng, (HIDDEN, 288), BF16),
        "image_start": _plain(rng, (HIDDEN,), BF16),
    }
    for layer in ("layers.0", "layers.1", "mtp.0"):
        t.update(_dense(rng, f"{layer}.attn.wq_a", 64, HIDDEN))
        t.update(_dense(rng, f"{layer}.attn.wo_a", 96, 80))
        t.update(_dense(rng, f"{layer}.ffn.shared_experts.w1", 64, HIDDEN))
        for e in range(2):
            t.update(_fp4(rng, f"{layer}.ffn.experts.{e}.w1", 64, HIDDEN))
            t.update(_fp4(rng, f"{layer}.ffn.experts.{e}.w2", HIDDEN, 64))
        t[f"{layer}.ffn.gate.weight"] = _plain(rng, (2, HIDDEN), BF16)
        t[f"{layer}.ffn.gate.bias"] = _plain(rng, (2,), np.float32)
        t[f"{layer}.attn_norm.weight"] = _plain(rng, (HIDDEN,), np.float32)
        t[f"{layer}.hc_attn_fn"] = _plain(rng, (24, 4 * HIDDEN), np.float32)
    t["layers.0.ffn.gate.bias_vl"] = _plain(rng, (2,), np.float32)
    t["layers.0.attn.indexer.wk.weight"] = _plain(rng, (32, 64), BF16)
    t.update(_dense(rng, "mtp.0.main_proj", HIDDEN, 2 * HIDDEN))
    t[ENGRAM_LAYER + ".weight"] = _fp8(rng, (ENGRAM_ROWS, ENGRAM_DIM))
    t[ENGRAM_LAYER + ".scale"] = _e8m0(rng, (ENGRAM_ROWS, ENGRAM_DIM // BLOCK))
    t.update(_dense(rng, "layers.1.engram.wkv", 5 * HIDDEN, 3 * ENGRAM_DIM))
    t["layers.1.engram.q_weight"] = _plain(rng, (4, HIDDEN), np.float32)
    t["layers.1.engram.k_weight"] = _plain(rng, (4, HIDDEN), np.float32)
    return dict(sorted(t.items()))


def write_release(
    root: Path,
    tensors: dict[str, np.ndarray] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """The tiny V4.1 checkpoint under ``root``: the Engram tensors in a shard of their own (as the
    release keeps its two tables in the last two shards), everything else in another."""
    tensors = release_tensors() if tensors is None else tensors
    engram = {n: a for n, a in tensors.items() if ".engram.embed." in n}
    rest = {n: a for n, a in tensors.items() if n not in engram}
    shards = {"model-00001-of-00002.safetensors": rest, "model-00002-of-00002.safetensors": engram}
    return write_checkpoint(root, shards, RELEASE_CONFIG if config is None else config)


def decode(tensors: dict[str, np.ndarray], weight: str) -> np.ndarray:
    """Independent float64 decode of a scaled weight of :func:`release_tensors`: FP8 through
    ml_dtypes, FP4 nibble by nibble (element 2i in the low nibble), each scale expanded over the
    block its grid implies."""
    w, s = tensors[weight], tensors[weight.removesuffix(".weight") + ".scale"]
    scale = np.exp2(s.view(np.uint8).astype(np.float64) - 127)
    if w.dtype == np.int8:
        mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)
        b = w.view(np.uint8)
        nibbles = np.stack([b & 0xF, b >> 4], axis=-1).reshape(w.shape[0], -1)
        values = np.where(nibbles & 8, -mags[nibbles & 7], mags[nibbles & 7])
        return values * np.repeat(scale, BLOCK, axis=1)
    values = w.astype(np.float64)
    rows = 1 if s.shape[0] == w.shape[0] else BLOCK
    full = np.repeat(np.repeat(scale, rows, axis=0), BLOCK, axis=1)
    return values * full[: w.shape[0], : w.shape[1]]
