"""transformers v5 fuses an MoE layer's experts into one module, and what that makes of expert
weights kept in BF16 (issue 14 item 2; docs/loaders.md, "transformers v5 fused experts").

Checkpoints store one tensor per expert (``mlp.experts.3.gate_proj.weight``); transformers 5.x
merges them when loading into ``mlp.experts.gate_up_proj`` / ``down_proj`` (3-D), and with
``quant_method fp8`` replaces the experts module by ``FP8Experts``, one FP8 weight and one scale
tensor for all experts, unless the skip list names that module. Two loading paths:

* CPU (what runs here unpatched): no GPU, so the quantizer dequantizes while loading, per expert,
  in the conversion that merges them;
* GPU: ``FP8Linear`` / ``FP8Experts`` are kept and the FP8 weights and scales copied into them.
  Its loading code needs no GPU: ``_fp8_modules`` runs it on CPU by turning off the quantizer's
  CPU fallback, and reads the loaded weights and scales (the Triton/DeepGEMM kernels that
  would use them need CUDA, so nothing is run through them).

Each case is compared with ``ue8m0 dequantize`` of the same checkpoint loaded as plain BF16.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import accelerate  # noqa: F401  (transformers loads FP8 checkpoints only with it)
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.integrations.finegrained_fp8 import FP8Experts
from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

from ckpt_fixtures import run_cli

FP8 = torch.float8_e4m3fn
IDS = torch.arange(32).reshape(2, 16) * 7 % 256
L0 = "model.layers.0.mlp.experts"


def _tiny_moe(path: Path, family: str) -> Path:
    """2 layers of 4 experts (hidden 256, expert intermediate 128: whole 128x128 blocks), BF16."""
    common: dict[str, Any] = dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=256,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        num_experts_per_tok=2,
    )
    if family == "qwen3_moe":
        config: Any = transformers.Qwen3MoeConfig(
            **common, intermediate_size=512, moe_intermediate_size=128, num_experts=4,
            num_key_value_heads=2, head_dim=64,
        )  # fmt: skip
        cls: Any = transformers.Qwen3MoeForCausalLM
    elif family == "mixtral":  # w1/w3/w2 under block_sparse_moe, renamed mlp when loading
        config = transformers.MixtralConfig(
            **common, intermediate_size=128, num_local_experts=4, num_key_value_heads=2,
            head_dim=64,
        )  # fmt: skip
        cls = transformers.MixtralForCausalLM
    elif family == "llama4":  # experts stored stacked, 3-D: feed_forward.experts.gate_up_proj
        config = transformers.Llama4TextConfig(
            **common, intermediate_size=128, intermediate_size_mlp=512, num_local_experts=4,
            num_key_value_heads=2, head_dim=64, interleave_moe_layer_step=1,
        )  # fmt: skip
        config.num_experts_per_tok = 1  # Llama 4 routes to one expert
        cls = transformers.Llama4ForCausalLM
    else:  # deepseek_v3: MLA (kv_a: 192 + 64 rows, whole blocks) and a shared expert
        config = transformers.DeepseekV3Config(
            **common, intermediate_size=512, moe_intermediate_size=128, n_routed_experts=4,
            n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=0,
            num_key_value_heads=4, kv_lora_rank=192, q_lora_rank=128, qk_rope_head_dim=64,
            qk_nope_head_dim=64, v_head_dim=64,
        )  # fmt: skip
        cls = transformers.DeepseekV3ForCausalLM
    torch.manual_seed(0)
    cls(config).to(torch.bfloat16).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_moe(tmp_path_factory.mktemp("qwen3_moe") / "bf16", "qwen3_moe")


@contextmanager
def _transformers_log() -> Iterator[list[str]]:
    """transformers' log records (its load report) while inside (its logger does not propagate)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _load(path: Path, **kwargs: Any) -> Any:
    out = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs)
    (out[0] if isinstance(out, tuple) else out).eval()
    return out


def _fp8_modules(path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    """Load as on a GPU: FP8Linear / FP8Experts kept (the quantizer's validate_environment, which
    switches to dequantizing when there is no GPU, does nothing)."""
    with monkeypatch.context() as m:
        m.setattr(FineGrainedFP8HfQuantizer, "validate_environment", lambda *a, **k: None)
        return _load(path, **kwargs)


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def _quantize(src: Path, dst: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Path:
    assert run_cli(["quantize", src, dst, "-q", *args], capsys)[0] == 0
    return dst


def _dequantize(src: Path, dst: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run_cli(["dequantize", src, dst, "-q"], capsys)[0] == 0
    return dst


def _experts_weights(model: Any) -> dict[str, torch.Tensor]:
    """Every fused experts weight (``....experts.gate_up_proj`` ...) as BF16: an FP8Experts
    weight times its block scales (our decode, from the module's own parameters)."""
    out = {}
    for name, module in model.named_modules():
        if not name.endswith(".experts"):
            continue
        for proj in ("gate_up_proj", "down_proj"):
            w = getattr(module, proj).detach()
            if isinstance(module, FP8Experts):
                br, bc = module.block_size
                s = getattr(module, proj + "_scale_inv").detach().float()
                s = s.repeat_interleave(br, -2).repeat_interleave(bc, -1)
                w = (w.float() * s[..., : w.shape[-2], : w.shape[-1]]).to(torch.bfloat16)
            out[f"{name}.{proj}"] = w
    return out


def _loads_as_dequantized(q: Path, dq: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Both paths load ``q`` as ``dq`` (its ``ue8m0 dequantize``, loaded as plain BF16): equal
    logits on the CPU path; on the GPU path nothing missing, unexpected or mismatched and every
    fused experts weight (x its scales) equal. Returns the GPU path's model."""
    plain = _load(dq)
    torch.testing.assert_close(_logits(_load(q)), _logits(plain), rtol=0, atol=0)
    model, info = _fp8_modules(q, monkeypatch, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    got, want = _experts_weights(model), _experts_weights(plain)
    assert sorted(got) == sorted(want) and len(want) == 4  # 2 layers x gate_up, down
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    return model


def _expert_skips(path: Path) -> list[str]:
    """The skip list's expert entries (the rest: the router, embeddings, norms, lm_head)."""
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["ignored_layers"] == qc["modules_to_not_convert"]
    return [s for s in qc["modules_to_not_convert"] if ".experts" in s]


def _dtypes(path: Path) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in load_file(path / "model.safetensors").items()}


def _rewrite(fp8: Path, src: Path, dst: Path, keep: str, skips: list[str] | None = None) -> Path:
    """``fp8`` with the tensors matching ``keep`` put back in BF16 from ``src`` (their scales
    dropped) and ``skips`` (default: their modules) added to the skip lists: what a converter
    that decides per expert writes."""
    shutil.copytree(fp8, dst, ignore=shutil.ignore_patterns(".ue8m0-*"))  # another converter's
    tensors, source = load_file(fp8 / "model.safetensors"), load_file(src / "model.safetensors")
    back = [n for n in source if re.search(keep, n) and n + "_scale_inv" in tensors]
    for name in back:
        tensors[name] = source[name]
        del tensors[name + "_scale_inv"]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    index = json.loads((fp8 / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((fp8 / "config.json").read_text())
    added = sorted(n.removesuffix(".weight") for n in back) if skips is None else skips
    for key in ("modules_to_not_convert", "ignored_layers"):
        config["quantization_config"][key] += added
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _verify_transformers(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``ue8m0 verify --engine transformers`` says transformers does with ``path``."""
    capsys.readouterr()
    _, out, _ = run_cli(["verify", path, "--json", "--engine", "transformers"], capsys)
    return str(json.loads(out)["engines"]["transformers"]["verdict"])


# (a) every expert FP8: ue8m0's default output


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_all_experts_fp8_load_as_the_dequantized_checkpoint(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tiny_moe(tmp_path / "bf16", family)
    q = _quantize(src, tmp_path / "fp8", capsys)
    dq = _dequantize(q, tmp_path / "dq", capsys)
    dtypes = _dtypes(q)
    experts = [n for n in dtypes if ".experts." in n and n.endswith(".weight")]
    assert len(experts) == 2 * 4 * 3 and all(dtypes[n] == FP8 for n in experts)
    assert _expert_skips(q) == []
    assert _verify_transformers(q, capsys) == "loads"

    model = _loads_as_dequantized(q, dq, monkeypatch)
    fused = [f"model.layers.{i}.mlp.experts" for i in (0, 1)]  # mixtral's renamed too
    assert all(isinstance(model.get_submodule(m), FP8Experts) for m in fused)


# (b) some experts BF16, listed per expert (ue8m0 no longer writes this: built by hand)


def test_one_expert_in_bf16_is_refused_on_both_paths(
    qwen3_moe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = _quantize(qwen3_moe, tmp_path / "fp8", capsys)
    mixed = _rewrite(q, qwen3_moe, tmp_path / "mixed", r"layers\.0\.mlp\.experts\.3\.")
    assert _expert_skips(mixed) == [f"{L0}.3.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    assert _verify_transformers(mixed, capsys) == "refuses"
    with _transformers_log() as log, pytest.raises(RuntimeError, match="automatic conversion"):
        _load(mixed)
    report = "\n".join(log)
    for proj in ("gate_proj", "down_proj"):  # the skip is not read: 4 weights, 3 scales
        want = (
            f"weight/scale count mismatch for mlp.experts.*.{proj}.weight (4 weights vs 3 scales)"
        )
        assert want in report
    with _transformers_log() as log, pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        _fp8_modules(mixed, monkeypatch)
    report = "\n".join(log)
    for proj, grid in (("gate_up_proj", "2, 2"), ("down_proj", "2, 1")):
        assert f"{L0}.{proj}_scale_inv" in report
        assert f"ckpt: torch.Size([3, {grid}]) vs model:torch.Size([4, {grid}])" in report


# (c) a whole layer's experts BF16


def test_a_kept_layer_listed_per_expert_only_is_misread_on_the_gpu_path(
    qwen3_moe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ue8m0's skip list before it named ``...experts``: per-expert entries never match the
    fused module, so it stays FP8Experts: the BF16 weights are cast to e4m3 by value and the
    scales are missing (left as allocated). The CPU path dequantizes per tensor and is right."""
    q = _quantize(qwen3_moe, tmp_path / "fp8", capsys)
    kept = _rewrite(q, qwen3_moe, tmp_path / "kept", r"layers\.0\.mlp\.experts\.")
    assert len(_expert_skips(kept)) == 12 and L0 not in _expert_skips(kept)
    assert _verify_transformers(kept, capsys) == "misreads"
    dq = _dequantize(kept, tmp_path / "dq", capsys)
    plain = _load(dq)
    torch.testing.assert_close(_logits(_load(kept)), _logits(plain), rtol=0, atol=0)

    model, info = _fp8_modules(kept, monkeypatch, output_loading_info=True)
    module = model.get_submodule(L0)
    assert isinstance(module, FP8Experts) and module.gate_up_proj.dtype == FP8
    assert sorted(info["missing_keys"]) == [f"{L0}.down_proj_scale_inv",
                                            f"{L0}.gate_up_proj_scale_inv"]  # fmt: skip
    want = _experts_weights(plain)[f"{L0}.gate_up_proj"]
    assert not torch.equal(module.gate_up_proj.to(torch.bfloat16), want)  # rounded to e4m3
    torch.testing.assert_close(module.gate_up_proj.to(torch.bfloat16), want.to(FP8).bfloat16())


def test_the_experts_entry_of_a_mixed_layer_is_misread_on_the_gpu_path(
    qwen3_moe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why ue8m0 writes ``...experts`` only for a layer kept whole: with FP8 gate/up beside BF16
    down_proj, the entry keeps the module BF16, the FP8 bytes are read as their values and the
    scales dropped as unexpected."""
    q = _quantize(qwen3_moe, tmp_path / "fp8", capsys)
    down = r"layers\.0\.mlp\.experts\.\d+\.down_proj"
    mixed = _rewrite(q, qwen3_moe, tmp_path / "mixed", down, skips=[L0])
    assert _verify_transformers(mixed, capsys) == "misreads"
    model, info = _fp8_modules(mixed, monkeypatch, output_loading_info=True)
    module = model.get_submodule(L0)
    assert not isinstance(module, FP8Experts) and module.gate_up_proj.dtype == torch.bfloat16
    assert f"{L0}.gate_up_proj_scale_inv" in info["unexpected_keys"]
    fp8 = load_file(q / "model.safetensors")[f"{L0}.0.gate_proj.weight"]
    assert torch.equal(module.gate_up_proj[0, :128], fp8.to(torch.bfloat16))  # no scale applied


@pytest.mark.parametrize(
    ("family", "exclude"),
    [
        ("qwen3_moe", r"experts\.3\."),
        ("qwen3_moe", r"experts\.\d+\.down_proj"),
        ("mixtral", r"experts\.3\."),  # the skip entry renamed block_sparse_moe -> mlp
    ],
)
def test_ue8m0_keeps_a_layers_experts_together_and_names_the_fused_module(
    family: str,
    exclude: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One expert (or one projection of every expert) excluded in layer 0: every expert weight
    of layer 0 stays BF16, layer 1's are FP8, and the skip list names layer 0's fused module
    besides its per-expert modules. Both paths then load it as the dequantized checkpoint."""
    src = _tiny_moe(tmp_path / "bf16", family)
    moe = "block_sparse_moe" if family == "mixtral" else "mlp"
    q = _quantize(src, tmp_path / "fp8", capsys, "--exclude", rf"layers\.0\.{moe}\.{exclude}")
    dtypes = _dtypes(q)
    for layer, want in ((0, torch.bfloat16), (1, FP8)):
        names = [n for n in dtypes if re.match(rf"model\.layers\.{layer}\.{moe}\.experts\..*t$", n)]
        assert len(names) == 12 and {dtypes[n] for n in names} == {want}, layer
    skips = _expert_skips(q)
    assert f"model.layers.0.{moe}.experts" in skips and len(skips) == 13
    assert not [s for s in skips if s.startswith("model.layers.1.")]

    model = _loads_as_dequantized(q, _dequantize(q, tmp_path / "dq", capsys), monkeypatch)
    assert not isinstance(model.get_submodule(L0), FP8Experts)
    assert isinstance(model.get_submodule("model.layers.1.mlp.experts"), FP8Experts)


def test_the_plan_says_why_the_other_experts_are_kept(
    qwen3_moe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["quantize", qwen3_moe, tmp_path / "q", "--dry-run", "--json", "--exclude",
         r"layers\.0\.mlp\.experts\.3\.up_proj"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    detail = {t["name"]: t for t in json.loads(out)["tensors_detail"]}
    assert detail[f"{L0}.3.up_proj.weight"]["reason"] == "--exclude"
    assert detail[f"{L0}.3.gate_proj.weight"]["reason"].startswith(f"fused with {L0}.3.up_proj")
    why = f"an expert of {L0} is kept ({L0}.3."
    assert detail[f"{L0}.0.down_proj.weight"]["reason"].startswith(why)
    assert detail["model.layers.1.mlp.experts.0.down_proj.weight"]["action"] == "quantize"


def test_stacked_experts_are_kept_and_their_module_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Llama 4 stores a layer's experts stacked (3-D ``feed_forward.experts.gate_up_proj``, no
    ``.weight``): ue8m0 keeps them and names ``feed_forward.experts`` in the skip list. Without
    that entry transformers' GPU path makes the module FP8Experts and refuses the checkpoint
    (scales missing, and down_proj is stored [experts, intermediate, hidden] where FP8Experts
    allocates [experts, hidden, intermediate])."""
    src = _tiny_moe(tmp_path / "bf16", "llama4")
    q = _quantize(src, tmp_path / "fp8", capsys)
    layers = [f"model.layers.{i}.feed_forward.experts" for i in (0, 1)]
    dtypes = _dtypes(q)
    assert {dtypes[f"{m}.{p}"] for m in layers for p in ("gate_up_proj", "down_proj")} == {
        torch.bfloat16
    }
    assert dtypes["model.layers.0.feed_forward.shared_expert.gate_proj.weight"] == FP8
    assert _expert_skips(q) == layers
    model = _loads_as_dequantized(q, _dequantize(q, tmp_path / "dq", capsys), monkeypatch)
    assert not any(isinstance(model.get_submodule(m), FP8Experts) for m in layers)

    unnamed = _rewrite(q, src, tmp_path / "unnamed", r"^$")
    config = json.loads((unnamed / "config.json").read_text())
    for key in ("modules_to_not_convert", "ignored_layers"):
        config["quantization_config"][key] = [
            m for m in config["quantization_config"][key] if m not in layers
        ]
    (unnamed / "config.json").write_text(json.dumps(config))
    with _transformers_log() as log, pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        _fp8_modules(unnamed, monkeypatch)
    report = "\n".join(log)
    assert "feed_forward.experts.gate_up_proj_scale_inv | MISSING" in report
    assert "ckpt: torch.Size([4, 128, 256]) vs model:torch.Size([4, 256, 128])" in report
