"""Small synthetic safetensors checkpoints for the checkpoint tests (built in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ue8m0.cli.main import main

BF16 = ml_dtypes.bfloat16


def save(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write with the safetensors library itself (our reader must read what it writes)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata or {"format": "pt"})


def write_checkpoint(
    root: Path,
    shards: dict[str, dict[str, np.ndarray]],
    config: dict[str, Any] | None = None,
    index: bool = True,
) -> Path:
    """A checkpoint directory: shards, an index (with total_size), config and a tokenizer file."""
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    total = 0
    for shard, tensors in shards.items():
        save(root / shard, tensors)
        for name, arr in tensors.items():
            weight_map[name] = shard
            total += arr.nbytes
    if index:
        (root / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
    (root / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "modeling_custom.py").write_text("# custom code\n")
    return root


def synthetic_tensors(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Two shards: dense linears, a partial-block weight, 3-D experts, norms, an embedding."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(BF16)

    return {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": w(64, 256),
            "model.layers.0.self_attn.q_proj.weight": w(256, 256),
            "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": w(192, 256, scale=3.0),
            "model.layers.0.input_layernorm.weight": np.ones(256, BF16),
            "model.layers.0.mlp.gate.weight": w(4, 256),
        },
        "model-00002-of-00002.safetensors": {
            "model.layers.0.mlp.experts.down_proj": w(4, 256, 128),
            "model.layers.0.mlp.experts.gate_up.weight": w(3, 256, 384, scale=10.0),
            "model.layers.0.mlp.down_proj.weight": w(128, 384),
            "model.layers.0.mlp.down_proj.bias": w(128),
            "model.norm.weight": np.ones(256, BF16),
            "lm_head.weight": w(64, 256),
        },
    }


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``ue8m0 ARGS`` in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_ok(*args: object) -> None:
    """Run ``ue8m0 ARGS`` in-process (output not captured); fail the test on a non-zero exit."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, f"ue8m0 {' '.join(map(str, args))}: exit {exc.code}"


def all_tensors(root: Path) -> dict[str, np.ndarray]:
    """Every tensor of every shard of ``root`` (copies)."""
    from ue8m0.checkpoint.safetensors import SafetensorsFile

    out: dict[str, np.ndarray] = {}
    for shard in sorted(root.glob("*.safetensors")):
        with SafetensorsFile(shard) as f:
            out.update({k: np.array(f.get(k)) for k in f.keys()})
    return out


def visible_files(root: Path) -> dict[str, bytes]:
    """The bytes of every non-hidden file of ``root`` (manifest and stats left out)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if not p.name.startswith(".")}


def ct_fp8_block_checkpoint(root: Path, seed: int = 0) -> Path:
    """An FP8_BLOCK checkpoint written by compressed-tensors' own compressor (what
    llm-compressor's ``model_free_ptq`` does per weight, minus its observer): per-128x128-block
    amax/448 scales from ``calculate_qparams`` (BF16, the weight dtype), weights compressed by
    the ``float-quantized`` compressor, config from ``ModelCompressor.update_config``."""
    import compressed_tensors as ct
    import torch
    from compressed_tensors.compressors import ModelCompressor, compress_module
    from compressed_tensors.quantization import (
        QuantizationConfig,
        initialize_module_for_quantization,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from safetensors.torch import save_file

    assert ct.__version__
    gen = torch.Generator().manual_seed(seed)
    scheme = preset_name_to_scheme("FP8_BLOCK", ["Linear"])
    br, bc = scheme.weights.block_structure
    shapes = {
        "model.layers.0.self_attn.q_proj": (256, 256),
        "model.layers.0.mlp.up_proj": (384, 256),
        "model.layers.0.mlp.down_proj": (256, 384),
    }
    state: dict[str, Any] = {}
    for module, (n, k) in shapes.items():
        w = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
        lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        initialize_module_for_quantization(lin, scheme, force_zero_point=False)
        blocks = w.float().reshape(n // br, br, k // bc, bc)
        scale, _ = calculate_qparams(
            blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3)), scheme.weights
        )
        lin.weight_scale.data.copy_(scale)
        compress_module(lin)
        state.update({f"{module}.{name}": t for name, t in lin.state_dict().items()})
    state["model.embed_tokens.weight"] = torch.randn(64, 256, generator=gen).to(torch.bfloat16)
    state["model.norm.weight"] = torch.ones(256, dtype=torch.bfloat16)
    root.mkdir(parents=True, exist_ok=True)
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    qc = QuantizationConfig(
        config_groups={"group_0": scheme},
        format="float-quantized",
        quantization_status="compressed",
        ignore=["lm_head", "model.embed_tokens"],
    )
    ModelCompressor(quantization_config=qc).update_config(str(root))
    return root
