"""ue8m0's outputs against DeepSeek's own conversion semantics (peers in deepseek_v3_peers.py).

``fp8_cast_bf16`` run on what ``ue8m0 quantize`` writes gives, tensor for tensor, the bits
``ue8m0 dequantize`` gives (F32 scales, rceil or fp32, partial grids, e5m2). Where they part,
the test pins down how: F8_E8M0 scales leave the FP8 weights unconverted (and ``verify --engine
deepseek`` says so), U8 scales are multiplied in as numbers, a 3-D expert stack stops the run, an
FP8 weight without a scale passes through (ue8m0 refuses it), and the index loses total_size.
``act_quant`` is checked against the ``fp32-div`` and ``log2`` rules and, on every bfloat16
amax, against ``rceil``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ue8m0
from ckpt_fixtures import run_cli, synthetic_tensors, write_checkpoint
from deepseek_v3_peers import BLOCK, MISSING, act_quant, fp8_cast_bf16

BF16 = ml_dtypes.bfloat16
P = "model.layers.0."
KV_A = P + "self_attn.kv_a_proj_with_mqa.weight"
SCALE = "_scale_inv"


def _dsv3_source(root: Path) -> Path:
    """Two shards of DeepSeek-V3 names, 2-D weights only: kv_a_proj_with_mqa has 576 rows
    (kv_lora_rank 512 + 64 rope, a partial scale grid of 5 rows), a 200x300 weight (partial both
    ways, kept unless --pad-partial), magnitudes from 1e-3 to 50 and each 128x128 block scaled by
    its own power of two (so reading another block's scale shows), a router, norms."""
    rng = np.random.default_rng(7)

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        blocks = [-(-d // BLOCK) for d in shape]
        per_block = np.exp2(rng.integers(-4, 5, blocks)).repeat(BLOCK, 0).repeat(BLOCK, 1)
        x = rng.standard_normal(shape) * scale * per_block[: shape[0], : shape[1]]
        return x.astype(BF16)

    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": w(64, 256),
            P + "self_attn.q_a_proj.weight": w(256, 256),
            KV_A: w(576, 256, scale=3.0),
            P + "self_attn.kv_b_proj.weight": w(512, 256),
            P + "self_attn.o_proj.weight": w(256, 384, scale=0.001),
            P + "input_layernorm.weight": np.ones(256, BF16),
        },
        "model-00002-of-00002.safetensors": {
            P + "mlp.gate.weight": w(8, 256),
            P + "mlp.experts.0.gate_proj.weight": w(128, 256),
            P + "mlp.experts.0.up_proj.weight": w(128, 256, scale=50.0),
            P + "mlp.experts.0.down_proj.weight": w(256, 128),
            P + "mlp.shared_experts.down_proj.weight": w(200, 300),
            "model.norm.weight": np.ones(256, BF16),
            "lm_head.weight": w(64, 256),
        },
    }
    return write_checkpoint(root, shards, {"model_type": "deepseek_v3"})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _dsv3_source(tmp_path_factory.mktemp("dsv3") / "src")


def _tensors(root: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _index(root: Path) -> dict[str, Any]:
    return json.loads((root / "model.safetensors.index.json").read_text())


def _grid(per_block: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A per-block tensor repeated over its 128x128 blocks and cut to ``shape``."""
    n, k = shape
    return per_block.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]


def _fp8_names(q: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in q.items() if t.element_size() == 1 and not n.endswith(SCALE)]


def _run_all(
    tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str], *quantize_args: str
) -> tuple[Path, Path, Path, str]:
    """quantize SRC with the args, then ``ue8m0 dequantize`` and the peer converter: the three
    directories and what the peer printed."""
    q, ours, peer = tmp_path / "q", tmp_path / "ours", tmp_path / "peer"
    code, _, err = run_cli(["quantize", src, q, "-q", *quantize_args], capsys)
    assert code == 0, err
    code, _, err = run_cli(["dequantize", q, ours, "-q"], capsys)
    assert code == 0, err
    fp8_cast_bf16(q, peer)
    return q, ours, peer, capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--scale-rule", "fp32"],
        ["--pad-partial"],
        ["--pad-partial", "--scale-rule", "fp32"],
        ["--fmt", "e5m2", "--not-for-serving"],
    ],
    ids=["default", "fp32", "pad-partial", "pad-partial-fp32", "e5m2"],
)
def test_the_converter_gives_dequantize_s_bits(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    q, ours, peer, printed = _run_all(tmp_path, source, capsys, *args)
    qt, mine, theirs = _tensors(q), _tensors(ours), _tensors(peer)
    assert qt[KV_A].element_size() == 1 and qt[KV_A + SCALE].shape == (5, 2)  # a partial grid
    fp8 = _fp8_names(qt)
    assert printed == "" and len(fp8) >= 7
    assert sorted(theirs) == sorted(mine)
    for name, t in mine.items():
        assert theirs[name].dtype == t.dtype, name
        assert torch.equal(_bits(theirs[name]), _bits(t)), name
    # fp32 scales: most float32 products need rounding to bfloat16, so the rounding mode counts
    product = qt[KV_A].float() * _grid(qt[KV_A + SCALE].float(), qt[KV_A].shape)
    inexact = int((product.to(torch.bfloat16).float() != product).sum())
    assert (inexact > product.numel() // 2) == ("fp32" in args)
    # the weight maps agree; DeepSeek's index drops total_size, ue8m0's recomputes it
    assert _index(peer)["weight_map"] == _index(ours)["weight_map"]
    assert _index(peer)["metadata"] == {} and _index(ours)["metadata"]["total_size"] > 0
    assert _verify_deepseek(q, capsys)[1] == "loads"


def test_e8m0_scales_leave_the_fp8_weights_unconverted(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher cannot type a float8_e8m0fnu pointer: KeyError, caught as a missing scale.
    The weight stays FP8 in the BF16 output, its scale is gone from shards and index."""
    q, ours, peer, printed = _run_all(tmp_path, source, capsys, "--scale-dtype", "e8m0")
    qt, mine, theirs = _tensors(q), _tensors(ours), _tensors(peer)
    fp8 = _fp8_names(qt)
    assert qt[fp8[0] + SCALE].dtype == torch.float8_e8m0fnu
    assert printed.splitlines() == [MISSING.format(n) for n in fp8]
    assert sorted(theirs) == sorted(mine)
    for name, t in mine.items():
        if name in fp8:
            assert t.dtype == torch.bfloat16
            assert theirs[name].dtype == torch.float8_e4m3fn
            assert torch.equal(_bits(theirs[name]), _bits(qt[name])), name
        else:
            assert torch.equal(_bits(theirs[name]), _bits(t)), name
    assert _index(peer)["weight_map"] == _index(ours)["weight_map"]
    # and the loader table predicts it
    code, out, _ = run_cli(["verify", q, "--engine", "deepseek", "--json"], capsys)
    deepseek = json.loads(out)["engines"]["deepseek"]
    assert code == 1 and deepseek["verdict"] == "misreads"
    (finding,) = deepseek["findings"]
    assert "unconverted" in finding["reason"] and finding["tensors"] == sorted(fp8)[:5]


def test_u8_scales_are_multiplied_in_as_their_byte_values(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A U8 scale loads as a number: each block comes out ``byte / 2**(byte - 127)`` times
    ue8m0's value (a byte of 115 for a scale of 2**-12 makes the weight 471,040 times larger)."""
    q, ours, peer, printed = _run_all(
        tmp_path, source, capsys, "--scale-dtype", "u8", "--not-for-serving"
    )
    qt, mine, theirs = _tensors(q), _tensors(ours), _tensors(peer)
    assert printed == ""
    for name in _fp8_names(qt):
        byte = qt[name + SCALE].double()
        factor = (byte * torch.exp2(127 - byte)).float()
        expected = (mine[name].float() * _grid(factor, mine[name].shape)).to(torch.bfloat16)
        assert torch.equal(_bits(theirs[name]), _bits(expected)), name
        assert not torch.equal(theirs[name], mine[name])
    assert _verify_deepseek(q, capsys) == (1, "misreads")


def _verify_deepseek(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """What ``ue8m0 verify --engine deepseek`` says DeepSeek's code does with ``path``."""
    code, out, _ = run_cli(["verify", path, "--engine", "deepseek", "--json"], capsys)
    return code, str(json.loads(out)["engines"]["deepseek"]["verdict"])


def test_a_3d_expert_stack_stops_the_converter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """weight_dequant asserts 2-D: the run ends in the shard holding the stacked experts, after
    writing the shards before it and without an index. ue8m0 dequantizes the stack."""
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    q, ours, peer = tmp_path / "q", tmp_path / "ours", tmp_path / "peer"
    assert run_cli(["quantize", src, q, "-q"], capsys)[0] == 0
    assert run_cli(["dequantize", q, ours, "-q"], capsys)[0] == 0
    stack = "model.layers.0.mlp.experts.gate_up.weight"
    assert _tensors(q)[stack].dim() == 3 and _tensors(ours)[stack].dtype == torch.bfloat16
    with pytest.raises(AssertionError, match="2 dimensions"):
        fp8_cast_bf16(q, peer)
    first = "model-00001-of-00002.safetensors"
    assert sorted(p.name for p in peer.iterdir()) == [first]
    mine = load_file(ours / first)
    theirs = load_file(peer / first)
    assert sorted(theirs) == sorted(mine)
    assert all(torch.equal(_bits(theirs[n]), _bits(t)) for n, t in mine.items())
    assert _verify_deepseek(q, capsys) == (1, "refuses")


def test_scales_are_found_in_any_shard_and_a_missing_one_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scale in another shard than its weight is found through the index by both; an FP8
    weight with no scale passes through DeepSeek's converter with a warning, ue8m0 refuses it."""
    rng = np.random.default_rng(3)
    codes = (rng.standard_normal((192, 256)) * 100).astype(ml_dtypes.float8_e4m3fn)
    scale = np.exp2(rng.integers(-12, 0, (2, 2))).astype(np.float32)
    shards = {
        "a.safetensors": {"x.weight": codes},
        "b.safetensors": {"x.weight_scale_inv": scale, "norm.weight": np.ones(8, BF16)},
    }
    src = write_checkpoint(tmp_path / "cross", shards)
    assert run_cli(["dequantize", src, tmp_path / "ours", "-q"], capsys)[0] == 0
    fp8_cast_bf16(src, tmp_path / "peer")
    assert capsys.readouterr().out == ""
    mine, theirs = _tensors(tmp_path / "ours"), _tensors(tmp_path / "peer")
    assert torch.equal(_bits(theirs["x.weight"]), _bits(mine["x.weight"]))
    assert float(theirs["x.weight"].float().abs().max()) > 0

    del shards["b.safetensors"]["x.weight_scale_inv"]
    src = write_checkpoint(tmp_path / "orphan", shards)
    fp8_cast_bf16(src, tmp_path / "peer2")
    assert capsys.readouterr().out.splitlines() == [MISSING.format("x.weight")]
    kept = _tensors(tmp_path / "peer2")["x.weight"]
    assert kept.dtype == torch.float8_e4m3fn and (_bits(kept).numpy() == codes.view(np.uint8)).all()
    code, _, err = run_cli(["dequantize", src, tmp_path / "ours2", "-q"], capsys)
    assert code == 2 and "'x.weight': FP8 tensor without a scale" in err


def _our_act_quant(x: torch.Tensor, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """ue8m0.quantize with 1x128 blocks and eps 1e-4: codes and float32 scales, act_quant's shapes."""
    q = ue8m0.quantize(x.float().reshape(-1, x.shape[-1]).numpy(), (1, BLOCK), "e4m3", rule, 1e-4)
    return q.codes.reshape(x.shape), q.scale.reshape(*x.shape[:-1], -1)


def _hair_amax(k: int, n: int) -> torch.Tensor:
    """float32 amaxes ``448 * 2**k * (1 + i * 2**-23)`` for i in 1..n: a/448 a hair above 2**k."""
    r = torch.exp2(torch.tensor(float(k))) * (1 + torch.arange(1, n + 1) * 2.0**-23)
    return r.float() * 448


def _activations() -> torch.Tensor:
    """(8, 64, 512) float32: blocks of magnitudes 2**-30 (below the 1e-4 clamp) to 2**9, a zero
    block, and 4 blocks whose amax (lane 0) is a hair above 448 * 2**-10. Enough elements that
    dividing by a float32 scale and multiplying by its reciprocal round some differently."""
    gen = torch.Generator().manual_seed(5)
    mag = torch.exp2(torch.randint(-30, 10, (8, 64, 4), generator=gen).float())
    x = torch.randn(8, 64, 512, generator=gen) * mag.repeat_interleave(BLOCK, dim=-1)
    x[0, 0, :BLOCK] = 0
    hair = _hair_amax(-10, 4)
    x[1, 0] = (torch.rand(512, generator=gen) * 1.8 - 0.9) * hair.repeat_interleave(BLOCK)
    x[1, 0, ::BLOCK] = hair
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("scale_fmt", "rule"), [(None, "fp32-div"), ("ue8m0", "log2")])
def test_act_quant_is_the_rule(scale_fmt: str | None, rule: str, dtype: torch.dtype) -> None:
    x = _activations().to(dtype)
    y, s = act_quant(x, scale_fmt=scale_fmt)
    codes, scale = _our_act_quant(x, rule)
    assert (_bits(y).numpy() == codes).all()
    assert (s.numpy().view(np.uint32) == scale.view(np.uint32)).all()
    if scale_fmt is None:  # fp32 has the same scales (its elements multiply: test_fp32_div)
        np.testing.assert_array_equal(scale, _our_act_quant(x, "fp32")[1])
    else:  # in float32 the hair blocks tell log2 from rceil; in bfloat16 nothing does
        differ = scale != _our_act_quant(x, "rceil")[1]
        assert differ.any() == (dtype == torch.float32)


def test_ue8m0_act_quant_is_rceil_for_every_bfloat16_amax() -> None:
    """Every positive finite bfloat16 as a block's amax: V3.1's ceil(log2(amax / 448)) is the
    exact (bit) rceil exponent, so on bfloat16 activations the two rules quantize alike."""
    amax = torch.arange(1, 0x7F80, dtype=torch.int16).view(torch.bfloat16)
    x = torch.zeros(amax.numel(), BLOCK, dtype=torch.bfloat16)
    x[:, 0], x[:, 1] = amax, -amax / 3
    y, s = act_quant(x, scale_fmt="ue8m0")
    codes, scale = _our_act_quant(x, "rceil")
    assert (s.numpy().view(np.uint32) == scale.view(np.uint32)).all()
    assert (_bits(y).numpy() == codes).all()
    assert float(s.min()) == 2.0**-22 and float(s.max()) == 2.0**120  # the clamp and the top


def test_ue8m0_act_quant_parts_from_rceil_only_a_hair_above_a_power_of_two() -> None:
    """float32 amaxes 448 * 2**k * (1 + i * 2**-23): where float32 log2 rounds to the integer k,
    act_quant's scale is half rceil's, the block's max element lands a hair above 448 and
    saturates to 448 (never NaN); rceil never saturates."""
    amax = torch.cat([_hair_amax(k, 16) for k in range(-20, 21)])
    x = torch.zeros(amax.numel(), BLOCK)
    x[:, 0] = amax
    y, s2 = act_quant(x, scale_fmt="ue8m0")
    codes, scale2 = _our_act_quant(x, "rceil")
    s, scale = s2[:, 0].numpy(), scale2[:, 0]
    differ = s != scale
    assert 0 < differ.sum() < differ.size // 2
    np.testing.assert_array_equal(s[differ] * 2, scale[differ])
    ratio = amax.double().numpy()[differ] / 448 / s[differ]
    assert ratio.max() < 1 + 2.0**-19 and ratio.min() > 1
    assert (_bits(y)[:, 0].numpy()[differ] == 0x7E).all()  # 448, saturated
    assert (codes[differ, 0] < 0x7E).all()  # rceil: a smaller code, no saturation
    log2_codes, log2_scale = _our_act_quant(x, "log2")
    np.testing.assert_array_equal(s2.numpy(), log2_scale)
    np.testing.assert_array_equal(_bits(y).numpy(), log2_codes)
