"""Fused groups decide together: the weights a serving engine merges into one layer
are all FP8 or all kept, and a partial scale grid is written only in the last member of a group
(not in an MoE expert's intermediate dim). Planned from headers: the plan is the evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ckpt_fixtures import run_cli, write_checkpoint

BF16 = ml_dtypes.bfloat16


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.02).astype(BF16)


def _plan(
    tmp_path: Path,
    tensors: dict[str, np.ndarray],
    config: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> dict[str, Any]:
    src = write_checkpoint(tmp_path / "src", {"model.safetensors": tensors}, config)
    code, out, err = run_cli(["quantize", src, tmp_path / "q", "--dry-run", "--json"], capsys)
    assert code == 0, err
    return {t["name"]: t for t in json.loads(out)["tensors_detail"]}


def test_a_64_wide_kv_keeps_q_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One KV head of 64: k and v cannot take a whole block, so q stays BF16 with them (vLLM
    fuses q/k/v and refuses a half-quantized qkv_proj)."""
    rng = np.random.default_rng(0)
    p = "model.layers.0.self_attn."
    tensors = {
        p + "q_proj.weight": _w(rng, 256, 256),
        p + "k_proj.weight": _w(rng, 64, 256),
        p + "v_proj.weight": _w(rng, 64, 256),
        p + "o_proj.weight": _w(rng, 256, 256),
    }
    plan = _plan(tmp_path, tensors, {"model_type": "llama"}, capsys)
    assert plan[p + "o_proj.weight"]["action"] == "quantize"
    for m in ("q_proj", "k_proj", "v_proj"):
        assert plan[p + m + ".weight"]["action"] == "copy", m
    assert plan[p + "q_proj.weight"]["reason"].startswith(f"fused with {p}k_proj")


def test_deepseek_mla_converts_kv_a_with_its_partial_grid_beside_q_a(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the official DeepSeek-V3 checkpoint: kv_a_proj_with_mqa (kv_lora_rank + rope rows,
    not a multiple of 128) FP8 with a partial grid, the last member of fused_qkv_a_proj; q_a
    FP8; the router kept; the skip list under both names."""
    rng = np.random.default_rng(1)
    p = "model.layers.0."
    tensors = {
        p + "self_attn.q_a_proj.weight": _w(rng, 256, 256),
        p + "self_attn.kv_a_proj_with_mqa.weight": _w(rng, 320, 256),  # 256 + 64 rope
        p + "self_attn.kv_b_proj.weight": _w(rng, 512, 256),
        p + "mlp.gate.weight": _w(rng, 8, 256),
        p + "mlp.experts.0.gate_proj.weight": _w(rng, 128, 256),
        p + "mlp.experts.0.up_proj.weight": _w(rng, 128, 256),
    }
    src = write_checkpoint(
        tmp_path / "src", {"model.safetensors": tensors}, {"model_type": "deepseek_v3"}
    )
    code, _, err = run_cli(["quantize", src, tmp_path / "q", "--json"], capsys)
    assert code == 0, err
    from ue8m0.checkpoint.safetensors import read_header

    infos = read_header(tmp_path / "q" / "model.safetensors")[0]
    kv = p + "self_attn.kv_a_proj_with_mqa.weight"
    assert infos[kv].dtype == "F8_E4M3" and infos[kv + "_scale_inv"].shape == (3, 2)
    assert infos[p + "self_attn.q_a_proj.weight"].dtype == "F8_E4M3"
    assert infos[p + "mlp.gate.weight"].dtype == "BF16"
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert p + "mlp.gate" in qc["modules_to_not_convert"]
    assert qc["ignored_layers"] == qc["modules_to_not_convert"]
    # and it dequantizes exactly as the partial grid says
    assert run_cli(["verify", tmp_path / "q", "--against", src, "-q"], capsys)[0] == 0


def test_partial_blocks_only_in_the_last_member_and_never_in_experts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    dense, expert = "model.layers.0.mlp.", "model.layers.0.mlp.experts.0."
    tensors = {
        dense + "gate_proj.weight": _w(rng, 320, 256),  # first member, partial: all kept
        dense + "up_proj.weight": _w(rng, 320, 256),
        dense + "down_proj.weight": _w(rng, 256, 384),
        expert + "gate_proj.weight": _w(rng, 256, 256),
        expert + "up_proj.weight": _w(rng, 192, 256),  # last member, but an expert: kept
    }
    plan = _plan(tmp_path, tensors, {"model_type": "qwen3_moe"}, capsys)
    assert plan[dense + "down_proj.weight"]["action"] == "quantize"
    for name in (dense + "gate_proj.weight", dense + "up_proj.weight"):
        assert plan[name]["action"] == "copy"
    for name in (expert + "gate_proj.weight", expert + "up_proj.weight"):
        assert plan[name]["action"] == "copy"
    assert "fused with" in plan[expert + "gate_proj.weight"]["reason"]


def test_an_excluded_member_keeps_its_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    p = "model.layers.0.mlp."
    tensors = {p + "gate_proj.weight": _w(rng, 256, 256), p + "up_proj.weight": _w(rng, 256, 256)}
    src = write_checkpoint(
        tmp_path / "src", {"model.safetensors": tensors}, {"model_type": "llama"}
    )
    code, out, _ = run_cli(
        ["quantize", src, tmp_path / "q", "--dry-run", "--json", "--exclude", "up_proj"], capsys
    )
    detail = {t["name"]: t for t in json.loads(out)["tensors_detail"]}
    assert (
        code == 0
        and detail[p + "gate_proj.weight"]["reason"] == f"fused with {p}up_proj (kept: --exclude)"
    )
