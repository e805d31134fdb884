"""FP8Linear and quantize_model: outputs equal F.linear of the dequantized operands, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from torch import nn
from torch.nn import functional as F

import ue8m0
from ue8m0.recipes import get_recipe
from ue8m0.torch import FP8Linear, activation_block, fake_quantize_activations, quantize_model

RECIPES = [
    "rceil",
    "fp32",
    "floor",
    "mxfp8",
    "e5m2",
    "mxfp4",
    "e4m3:1x128:log2",
    "e4m3:128x128:even",
]


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().view(np.uint32)


def _oracle_act(x: torch.Tensor, recipe: str) -> torch.Tensor:
    r = get_recipe(recipe)
    x2 = x.detach().reshape(-1, x.shape[-1]).float().numpy()
    q = ue8m0.quantize(x2, activation_block(r), r.fmt, r.scale_rule, r.eps, backend="reference")
    return torch.from_numpy(ue8m0.dequantize(q, backend="reference")).reshape(x.shape)


def _activations(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-30, 12, shape, generator=g))
    x.view(-1)[::97] = 0.0
    x.view(-1)[5::101] = -0.0
    x.view(-1)[7::89] *= 1e-8  # deep into the element subnormals
    return x


@pytest.mark.parametrize("recipe", RECIPES)
def test_activation_fake_quant_bit_exact(recipe: str) -> None:
    x = _activations(1, (3, 5, 300))  # 300 is no multiple of 128 or 32
    np.testing.assert_array_equal(
        _bits(fake_quantize_activations(x, recipe)), _bits(_oracle_act(x, recipe))
    )


def test_activation_fake_quant_zero_rows_and_bf16() -> None:
    x = torch.zeros(2, 256)
    x[1, 130] = 3.0
    np.testing.assert_array_equal(
        _bits(fake_quantize_activations(x, "rceil")), _bits(_oracle_act(x, "rceil"))
    )
    xb = _activations(2, (4, 200)).to(torch.bfloat16)
    np.testing.assert_array_equal(
        _bits(fake_quantize_activations(xb, "rceil")), _bits(_oracle_act(xb, "rceil"))
    )


def test_activation_nonfinite_raises_like_quantize() -> None:
    x = torch.ones(2, 128)
    x[1, 3] = float("nan")
    with pytest.raises(ue8m0.NonFiniteError):
        fake_quantize_activations(x, "rceil")


@pytest.mark.parametrize("recipe", ["rceil", "fp32", "mxfp8", "mxfp4"])
def test_fp8linear_equals_linear_of_dequantized(recipe: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(200, 70)
    layer = FP8Linear.from_linear(lin, recipe)
    q = get_recipe(recipe).quantize(lin.weight.detach().numpy())
    w = torch.from_numpy(ue8m0.dequantize(q))
    np.testing.assert_array_equal(layer.weight_codes.numpy(), q.codes)
    np.testing.assert_array_equal(layer.weight_scale.numpy(), q.scale)
    x = torch.randn(4, 9, 200)
    with torch.no_grad():
        np.testing.assert_array_equal(_bits(layer(x)), _bits(F.linear(x, w, lin.bias)))
        act = FP8Linear.from_linear(lin, recipe, activations=True)
        want = F.linear(_oracle_act(x, recipe), w, lin.bias)
        np.testing.assert_array_equal(_bits(act(x)), _bits(want))


def test_fp8linear_state_dict_dtype_and_repr() -> None:
    lin = nn.Linear(64, 32, bias=False)
    layer = FP8Linear.from_linear(lin, "rceil", activations=True)
    assert set(layer.state_dict()) == {"weight"}
    assert layer.bias is None and layer.weight_scale_codes is not None
    assert layer.weight_scale_codes.dtype == torch.uint8
    assert "activations=(1, 128)" in repr(layer) and "e4m3 128x128 rceil" in repr(layer)
    y = layer(torch.randn(3, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (3, 32)
    fresh = FP8Linear(64, 16, recipe="fp32")
    assert fresh.weight_scale_codes is None and fresh.weight.shape == (16, 64)
    assert fresh(torch.randn(2, 64)).shape == (2, 16)


def _tiny_bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=160,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def test_quantize_model_leaves_excluded_untouched() -> None:
    model = _tiny_bert()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
    excluded = dict(model.named_modules())["encoder.layer.0.attention.self.query"]
    pooler = model.pooler.dense
    pooler_w = pooler.weight.detach().clone()
    names = quantize_model(
        model,
        "rceil",
        exclude=["encoder.layer.0.attention.self.query", "pooler.*"],
        activations=True,
    )
    linears = 2 * 6 + 1  # q, k, v, attention out, intermediate, output per layer; pooler
    assert len(names) == linears - 2
    assert "encoder.layer.0.attention.self.query" not in names and "pooler.dense" not in names
    modules = dict(model.named_modules())
    assert modules["encoder.layer.0.attention.self.query"] is excluded
    assert modules["pooler.dense"] is pooler and torch.equal(pooler.weight, pooler_w)
    assert all(isinstance(modules[n], FP8Linear) for n in names)
    assert not any(isinstance(m, nn.Linear) and n in names for n, m in modules.items())
    with torch.no_grad():
        after = model(input_ids=ids).last_hidden_state
    rel = float((after - before).norm() / before.norm())
    assert 0 < rel < 0.1


def test_quantize_model_exclude_forms() -> None:
    model = _tiny_bert()
    names = quantize_model(model, get_recipe("mxfp8"), exclude="encoder.layer.1")
    assert names and all(not n.startswith("encoder.layer.1.") for n in names)
    rest = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(rest) == 6 and all(n.startswith("encoder.layer.1.") for n in rest)
    assert quantize_model(model, "rceil") == rest


def test_core_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import ue8m0, ue8m0.layouts\n"
        "assert 'torch' not in dir(ue8m0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_weight_is_quantized_from_its_values() -> None:
    lin = nn.Linear(128, 8).to(torch.bfloat16)
    layer = FP8Linear.from_linear(lin, "rceil")
    w = lin.weight.detach().float().numpy().astype(ml_dtypes.bfloat16)
    want = ue8m0.dequantize(ue8m0.quantize(w))
    np.testing.assert_array_equal(layer.weight.numpy(), want)
