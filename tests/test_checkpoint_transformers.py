"""A real client: transformers (CPU) loads our FP8 output of a tiny Llama-style model."""

from __future__ import annotations

import json
from pathlib import Path

import accelerate  # noqa: F401  (transformers loads FP8 checkpoints only with it)
import numpy as np
import pytest
import torch
import transformers

from ckpt_fixtures import run_cli
from ue8m0.checkpoint.safetensors import SafetensorsFile


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("llama") / "bf16"
    model.save_pretrained(path)
    return path


def _load(path: Path) -> object:
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def _logits(model: object, ids: object) -> object:
    with torch.no_grad():
        return model(ids).logits.float()  # type: ignore[operator]


@pytest.mark.parametrize("scale_dtype", ["f32", "e8m0"])
def test_transformers_loads_our_fp8_output(
    tiny_llama: Path, tmp_path: Path, scale_dtype: str, capsys: pytest.CaptureFixture[str]
) -> None:
    q, dq = tmp_path / "fp8", tmp_path / "bf16"
    assert run_cli(["quantize", tiny_llama, q, "-q", "--scale-dtype", scale_dtype], capsys)[0] == 0
    assert run_cli(["dequantize", q, dq, "-q"], capsys)[0] == 0
    ours: dict[str, np.ndarray] = {}
    for shard in dq.glob("*.safetensors"):
        with SafetensorsFile(shard) as f:
            ours.update({k: np.array(f.get(k)) for k in f.keys()})
    with SafetensorsFile(next(q.glob("*.safetensors"))) as f:
        n_fp8 = sum(1 for k in f.keys() if f.info(k).dtype == "F8_E4M3")
    assert n_fp8 == 14  # 7 linears x 2 layers

    fp8_model = _load(q)
    state = fp8_model.state_dict()  # type: ignore[attr-defined]
    checked = 0
    for name, want in ours.items():
        got = state[name]
        assert got.dtype == torch.bfloat16, name
        np.testing.assert_array_equal(
            got.contiguous().view(torch.int16).numpy(), want.view(np.int16), err_msg=name
        )
        checked += 1
    assert checked == len(ours)

    ids = torch.arange(32).reshape(2, 16) * 7 % 256
    ref = _logits(_load(tiny_llama), ids)
    got = _logits(fp8_model, ids)
    rel = float((got - ref).norm() / ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0))
    print(f"logits vs BF16: rel. error {rel:.4f}, cosine {cos:.6f}")
    assert rel < 0.1 and cos > 0.995

    # our dequantized output is a plain BF16 model with the same logits as the FP8 load
    plain = _load(dq)
    assert getattr(plain.config, "quantization_config", None) is None  # type: ignore[attr-defined]
    torch.testing.assert_close(_logits(plain, ids), got, rtol=0, atol=0)


def _dequantized_state(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for shard in path.glob("*.safetensors"):
        with SafetensorsFile(shard) as f:
            out.update({k: np.array(f.get(k)) for k in f.keys()})
    return out


@pytest.mark.parametrize("engine", ["sglang", "transformers", "vllm"])
def test_transformers_reads_mxfp8_as_weight_scale_inv_only(
    tiny_llama: Path, tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers 5.24 maps ``quant_method mxfp8`` to its fine-grained FP8 quantizer, which
    reads ``weight_scale_inv``: ``--format mxfp8 --engine sglang|transformers`` loads as
    ``ue8m0 dequantize`` computes it, bit for bit; the vLLM form (``weight_scale``, the
    default) has its scales dropped as unexpected keys and computes something else, which
    ``verify --engine transformers`` predicts."""
    q, dq = tmp_path / "mx", tmp_path / "bf16"
    args = ["quantize", tiny_llama, q, "-q", "--format", "mxfp8", "--engine", engine]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(["dequantize", q, dq, "-q"], capsys)[0] == 0
    code, out, _ = run_cli(["verify", q, "--engine", "transformers", "--json"], capsys)
    verdict = json.loads(out)["engines"]["transformers"]["verdict"]
    model = _load(q)
    state = model.state_dict()  # type: ignore[attr-defined]
    ours = _dequantized_state(dq)
    name = "model.layers.0.self_attn.q_proj.weight"
    same = torch.equal(
        state[name].contiguous().view(torch.int16), torch.from_numpy(ours[name].view(np.int16))
    )
    ids = torch.arange(32).reshape(2, 16) * 7 % 256
    diff = float((_logits(model, ids) - _logits(_load(dq), ids)).abs().max())
    print(f"{engine}: transformers verdict {verdict}, max |logit diff| {diff:.4f}")
    if engine == "vllm":
        assert (code, verdict) == (1, "misreads") and not same and diff > 0.1
    else:
        assert (code, verdict) == (0, "loads") and same and diff == 0.0
        for key, want in ours.items():
            got = state[key].contiguous().view(torch.int16).numpy()
            np.testing.assert_array_equal(got, want.view(np.int16), err_msg=key)
