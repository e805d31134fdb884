"""A real client: transformers (CPU) loads our FP8 output of a tiny Llama-style model."""

from __future__ import annotations

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
