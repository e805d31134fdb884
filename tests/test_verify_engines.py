"""``verify --engine``: the loader table says which engine loads, refuses or silently misreads a
checkpoint, for each case of the loaders' rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ckpt_fixtures import run_cli, synthetic_tensors, write_checkpoint

E4M3 = ml_dtypes.float8_e4m3fn
#: the config of a DeepSeek-layout FP8 Llama, for checkpoints written by hand
FP8_CONFIG = {
    "model_type": "llama",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
}


def _verify(ckpt: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code, out, _ = run_cli(["verify", ckpt, "--json", *args], capsys)
    return code, json.loads(out)


def _verdicts(result: Any) -> dict[str, str]:
    return {e: v["verdict"] for e, v in result["engines"].items()}


def _quantized(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Path:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    dst = tmp_path / "q"
    code, _, err = run_cli(["quantize", src, dst, "-q", *args], capsys)
    assert code == 0, err
    return dst


def test_the_default_output_loads_everywhere_but_3d_stacks_in_deepseeks_converter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture has stacked 3-D experts: the serving engines load them, DeepSeek's
    fp8_cast_bf16.py (2-D only) stops at them (measured in tests/test_deepseek_v3_peers.py)."""
    code, result = _verify(_quantized(tmp_path, capsys), capsys, "--engine", "vllm")
    verdicts = _verdicts(result)
    assert code == 0 and verdicts.pop("deepseek") == "refuses"
    assert set(verdicts.values()) == {"loads"}
    (finding,) = result["engines"]["deepseek"]["findings"]
    assert finding["tensors"] == ["model.layers.0.mlp.experts.gate_up.weight"]


def test_u8_scales_are_misread_by_vllm_sglang_and_deepseek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = _quantized(tmp_path, capsys, "--scale-dtype", "u8", "--not-for-serving")
    code, result = _verify(q, capsys)
    assert code == 0  # informational without --engine
    assert _verdicts(result) == {
        "vllm": "misreads",
        "sglang": "misreads",
        "transformers": "loads",
        "deepseek": "misreads",  # and it refuses the 3-D stacks: misreads is the worse
    }
    assert _verify(q, capsys, "--engine", "sglang")[0] == 1
    assert _verify(q, capsys, "--engine", "transformers")[0] == 0


def test_e8m0_scales_are_misread_by_deepseek_v3s_converter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, result = _verify(_quantized(tmp_path, capsys, "--scale-dtype", "e8m0"), capsys)
    verdicts = _verdicts(result)
    assert verdicts["deepseek"] == "misreads" and verdicts["vllm"] == "loads"
    assert "fp8_cast_bf16.py" in result["engines"]["deepseek"]["findings"][0]["reason"]


def test_e5m2_is_misread_under_quant_method_fp8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = _quantized(tmp_path, capsys, "--fmt", "e5m2", "--not-for-serving")
    assert _verdicts(_verify(q, capsys)[1])["vllm"] == "misreads"


def test_an_evenly_dividing_partial_grid_is_misread_by_transformers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """192 rows, 2 scale rows: transformers on CPU reads 96-row blocks."""
    _, result = _verify(_quantized(tmp_path, capsys, "--pad-partial"), capsys)
    finding = result["engines"]["transformers"]["findings"][0]
    assert finding["verdict"] == "misreads"
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" in finding["tensors"]


def _fp8(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    codes = rng.integers(0, 0x7E, (rows, cols), dtype=np.uint8)
    return codes.view(E4M3)


def test_a_split_fused_group_is_refused_by_vllm_sglang_and_deepseek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """q FP8 beside BF16 k/v (what a converter without fused groups writes for 64-wide k/v)."""
    rng = np.random.default_rng(0)
    p = "model.layers.0.self_attn."
    tensors = {
        p + "q_proj.weight": _fp8(rng, 256, 256),
        p + "q_proj.weight_scale_inv": np.full((2, 2), 2.0**-8, np.float32),
        p + "k_proj.weight": rng.standard_normal((64, 256)).astype(ml_dtypes.bfloat16),
        p + "v_proj.weight": rng.standard_normal((64, 256)).astype(ml_dtypes.bfloat16),
    }
    ckpt = write_checkpoint(tmp_path / "split", {"model.safetensors": tensors}, FP8_CONFIG)
    code, result = _verify(ckpt, capsys, "--engine", "vllm")
    assert code == 1
    verdicts = _verdicts(result)
    assert verdicts == {
        "vllm": "refuses",
        "sglang": "refuses",
        "transformers": "loads",
        "deepseek": "refuses",
    }
    assert "some but not all shards" in result["engines"]["vllm"]["findings"][0]["reason"]
    assert result["engines"]["vllm"]["findings"][0]["tensors"] == [
        p + "k_proj.weight",
        p + "v_proj.weight",
    ]


def test_scale_values_that_look_like_exponent_bytes_are_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """F32 scales of 120.0 where 2**-7 was meant: what a converter that copied E8M0 bytes as
    numbers writes (vLLM issue 43416)."""
    rng = np.random.default_rng(1)
    tensors = {
        "x.weight": _fp8(rng, 256, 256),
        "x.weight_scale_inv": np.array([[120.0, 121.0], [119.0, 120.0]], np.float32),
    }
    ckpt = write_checkpoint(tmp_path / "bytes", {"model.safetensors": tensors}, FP8_CONFIG)
    verdicts = _verdicts(_verify(ckpt, capsys)[1])
    assert set(verdicts.values()) == {"misreads"}


def test_a_v4_checkpoint_without_expert_dtype_is_misread_by_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    tensors = {
        "layers.0.attn.wq_a.weight": _fp8(rng, 256, 256),
        "layers.0.attn.wq_a.scale": np.full((2, 2), 2.0**-8, np.float32),
    }
    ckpt = write_checkpoint(
        tmp_path / "v4", {"model.safetensors": tensors}, {"model_type": "deepseek_v4"}
    )
    assert _verdicts(_verify(ckpt, capsys)[1])["vllm"] == "misreads"
    config = {"model_type": "deepseek_v4", "expert_dtype": "fp8"}
    ok = write_checkpoint(tmp_path / "v4ok", {"model.safetensors": tensors}, config)
    assert _verdicts(_verify(ok, capsys)[1])["vllm"] == "loads"


@pytest.mark.parametrize(
    ("engine", "want"),
    [
        ("vllm", {"vllm": "loads", "sglang": "refuses", "transformers": "misreads"}),
        ("sglang", {"vllm": "refuses", "sglang": "loads", "transformers": "loads"}),
    ],
)
def test_mxfp8_scale_names_per_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str, want: dict[str, str]
) -> None:
    """vLLM reads serialized MXFP8 with weight_scale (measured in tests/test_vllm_cpu.py),
    SGLang and transformers with weight_scale_inv (transformers measured in
    tests/test_checkpoint_transformers.py): ``--engine`` picks the form, verify names who
    reads it."""
    ckpt = _quantized(tmp_path, capsys, "--format", "mxfp8", "--engine", engine)
    _, result = _verify(ckpt, capsys)
    assert {e: v for e, v in _verdicts(result).items() if e in want} == want
    unknown = "weight_scale_inv is unknown" if engine == "sglang" else "weight_scale is not a"
    assert unknown in str(result["engines"]["vllm" if engine == "sglang" else "sglang"])
