"""A real client for the DeepSeek-V4 release layout: transformers 5.24 (CPU) loads what
``quantize --format deepseek-v4`` writes (FP8 dense layers, packed FP4 routed experts, F8_E8M0
``.scale``) and what ``relayout --to fp8`` makes of it, and computes the same weights and logits
as on our own ``dequantize`` of the same output.

What transformers does with these checkpoints on a CPU (read from its source):

* ``FineGrainedFP8HfQuantizer.validate_environment`` (``quantizers/quantizer_finegrained_fp8.py``)
  sets ``dequantize=True`` for a pre-quantized checkpoint when no GPU/XPU is present (a logged
  warning, no error), so the CPU load always dequantizes: ``Fp8Dequantize``
  (``integrations/finegrained_fp8.py``) unpacks FP4 low nibble first through the E2M1 table, takes
  the block size from the scale grid (1x32 for FP4 experts, 128x128 for FP8) and multiplies in
  float32 before casting to the parameter's dtype. Passing ``FineGrainedFP8Config(dequantize=True)``
  gives the same model.
* Its quantized compute (``FP8Linear``, ``FP8Experts`` with ``expert_dtype="fp4"``) has no CPU
  path: it needs DeepGEMM (CUDA SM90/SM100) or the Triton kernel ``kernels-community/finegrained-fp8``
  fetched from the Hub by the ``kernels`` package. Without ``kernels`` it raises ImportError; with
  it, ``USE_HUB_KERNELS=0`` (module global ``_kernels_enabled``) is the switch that stops the fetch.
  The module skeleton it would load into on a GPU is still built on the meta device here, and our
  tensors are checked against it (names, shapes, dtypes).

Exact equality, not a tolerance: every stored value (FP8 or FP4 code times a power of two) is
exactly representable in BF16, both loads hold the same BF16/F32 parameters bit for bit, and the
same CPU kernels run on the same tensors in the same order, so the logits match bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import accelerate  # noqa: F401  (transformers loads FP8 checkpoints only with it)
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.integrations import finegrained_fp8, hub_kernels
from transformers.quantizers import AutoHfQuantizer

import v4_tiny
from ue8m0.cli.main import main

#: a fixed input long enough for every attention kind: past the sliding window (8), 40 CSA
#: entries for the indexer's top-4, one HCA entry (ratio 128)
IDS = (torch.arange(160) * 37 % 256).reshape(1, 160)


def _cli(*args: object) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, f"ue8m0 {args[0]} exited {exc.code}"


@pytest.fixture(scope="module")
def v4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The BF16 source in DeepSeek-V4's layout, our release layout (FP4 experts), its FP8
    relayout, and our dequantization of each."""
    root = tmp_path_factory.mktemp("v4")
    model = v4_tiny.write_checkpoint(root / "bf16")
    _cli("quantize", root / "bf16", root / "fp4", "-q", "--format", "deepseek-v4")
    _cli("relayout", root / "fp4", root / "fp8", "-q", "--to", "fp8")
    for experts in ("fp4", "fp8"):
        _cli("dequantize", root / experts, root / f"{experts}-bf16", "-q")
    return {"root": root, "model": model}


def _load(path: Path, **kwargs: Any) -> Any:
    model, info = transformers.DeepseekV4ForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, output_loading_info=True, **kwargs
    )
    # a key transformers does not consume (or a parameter it does not find) is no error there:
    # the parameter keeps its random init
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }, path.name
    return model.eval()


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def test_deepseek_names_load_back_into_transformers_bit_for_bit(v4: dict[str, Any]) -> None:
    """The inverse of transformers' V4 conversion mapping (tests/v4_tiny.py) is exact: the BF16
    checkpoint in DeepSeek's names loads with no key left over or missing, every tensor equal to
    the model it was written from."""
    names = set(_tensors(v4["root"] / "bf16"))
    assert not any(n.startswith("model.") for n in names)
    assert {
        "embed.weight",
        "head.weight",
        "hc_head_fn",
        "layers.0.ffn.gate.tid2eid",
        "layers.0.attn.kv_norm.weight",
        "layers.1.attn.indexer.compressor.ape",
        "layers.1.attn.indexer.weights_proj.weight",
        "layers.2.attn.compressor.wkv.weight",
        "layers.2.ffn.gate.bias",
        "layers.2.ffn.experts.3.w3.weight",
    } <= names
    loaded = _load(v4["root"] / "bf16")
    _assert_same_state(loaded.state_dict(), v4["model"].state_dict())
    assert torch.equal(_logits(loaded), _logits(v4["model"]))


@pytest.mark.parametrize("experts", ["fp4", "fp8"])
def test_transformers_on_cpu_computes_what_our_dequantize_gives(
    v4: dict[str, Any], experts: str
) -> None:
    root = v4["root"]
    config = transformers.AutoConfig.from_pretrained(root / experts)
    assert config.expert_dtype == experts
    assert config.quantization_config["expert_dtype"] == experts
    assert config.quantization_config["scale_fmt"] == "ue8m0"
    stored = _tensors(root / experts)
    w1 = stored["layers.1.ffn.experts.0.w1.weight"]
    assert w1.dtype == (torch.int8 if experts == "fp4" else torch.float8_e4m3fn)
    assert stored["layers.1.ffn.experts.0.w1.scale"].dtype == torch.float8_e8m0fnu
    assert stored["layers.1.attn.wq_a.scale"].dtype == torch.float8_e8m0fnu

    quantized = _load(root / experts)  # no GPU: transformers dequantizes at load
    state = quantized.state_dict()
    assert state["model.layers.1.mlp.experts.gate_up_proj"].dtype == torch.bfloat16
    assert not any(
        isinstance(m, (finegrained_fp8.FP8Linear, finegrained_fp8.FP8Experts))
        for m in quantized.modules()
    )
    plain = _load(root / f"{experts}-bf16")
    assert getattr(plain.config, "quantization_config", None) is None
    _assert_same_state(state, plain.state_dict())
    assert torch.equal(_logits(quantized), _logits(plain))

    # the explicit form of what the CPU path does by itself
    explicit = _load(
        root / experts, quantization_config=transformers.FineGrainedFP8Config(dequantize=True)
    )
    _assert_same_state(explicit.state_dict(), state)

    # and both are the model we started from, quantized: what was kept is bit-identical, the
    # FP8 weights within E4M3's rounding (measured 0.027), the experts within E2M1's (0.118; the
    # FP8 relayout of FP4 experts is exact here, so the same)
    original = v4["model"].state_dict()
    for name, tensor in original.items():
        rel = float((state[name].float() - tensor.float()).norm() / tensor.float().norm())
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            assert rel < 0.15, (name, rel)
        elif _scale_name(name) in stored:
            assert rel < 0.04, (name, rel)
        else:
            assert torch.equal(state[name], tensor), name
    ref, got = _logits(v4["model"]), _logits(quantized)
    assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.9


def _scale_name(name: str) -> str | None:
    """Where our checkpoint keeps the scale of transformers' (non-expert) weight ``name``."""
    if not name.endswith(".weight"):
        return None
    return v4_tiny.deepseek_name(name).removesuffix("weight") + "scale"


def _fp8_skeleton(path: Path) -> Any:
    """The model transformers would load ``path`` into on a GPU, on the meta device: its FP8
    quantizer's module replacement (``replace_with_fp8_linear``) without the CPU fallback."""
    config = transformers.AutoConfig.from_pretrained(path)
    quantizer = AutoHfQuantizer.from_config(config.quantization_config, pre_quantized=True)
    assert quantizer.quantization_config.dequantize is False
    with torch.device("meta"):
        model = transformers.DeepseekV4ForCausalLM(config)
    quantizer.preprocess_model(model)
    return model


def _expected(name: str, stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Our tensor for transformers' FP8 parameter ``name``, and the names it comes from:
    ``.weight_scale_inv`` is DeepSeek's ``.scale``; routed experts are stacked over E, w1 above
    w3 in ``gate_up_proj``."""
    found = re.fullmatch(
        r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)_proj(_scale_inv)?", name
    )
    if found is None:
        weight = name.removesuffix("_scale_inv")
        source = _scale_name(weight) if weight != name else v4_tiny.deepseek_name(weight)
        assert source is not None
        return stored[source], [source]
    layer, kind, scale = found.groups()
    prefix = f"layers.{layer}.ffn.experts"
    n_experts = sum(1 for k in stored if re.fullmatch(rf"{prefix}\.\d+\.w2\.weight", k))
    parts = ("w1", "w3") if kind == "gate_up" else ("w2",)
    leaf = "scale" if scale else "weight"
    sources = [[f"{prefix}.{e}.{w}.{leaf}" for w in parts] for e in range(n_experts)]
    stacked = torch.stack([torch.cat([stored[n] for n in names]) for names in sources])
    return stacked, [n for names in sources for n in names]


@pytest.mark.parametrize("experts", ["fp4", "fp8"])
def test_our_tensors_fill_transformers_fp8_modules_whose_cpu_compute_raises(
    v4: dict[str, Any], experts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU transformers keeps the checkpoint quantized in FP8Linear / FP8GroupedLinear /
    FP8Experts: each of their parameters is one of our tensors with its shape and dtype (F8_E8M0
    scales as float8_e8m0fnu; FP4 experts int8 [E, 2I, H/2] with scales [E, 2I, H/32]), and
    every FP8 or FP4 tensor we write lands in one of them (none in a BF16 layer). On the CPU their
    compute raises: no kernel without a GPU, and no download (``USE_HUB_KERNELS`` off)."""
    path = v4["root"] / experts
    stored = _tensors(path)
    skeleton = _fp8_skeleton(path)
    fp8_modules = (finegrained_fp8.FP8Linear, finegrained_fp8.FP8Experts)
    used: list[str] = []
    for module_name, module in skeleton.named_modules():
        if not isinstance(module, fp8_modules):
            continue
        for leaf, param in module.named_parameters(recurse=False):
            want, sources = _expected(f"{module_name}.{leaf}", stored)
            assert (param.shape, param.dtype) == (want.shape, want.dtype), (module_name, leaf)
            used += sources
    quantized = {n for n, t in stored.items() if t.dtype in (torch.float8_e4m3fn, torch.int8)}
    scales = {n for n in stored if n.endswith(".scale")}
    assert len(used) == len(set(used)) and set(used) == quantized | scales
    # per layer wq_a, wq_b, wkv, wo_a, wo_b, 3 shared-expert and 4 x 3 routed-expert weights,
    # and the indexer's wq_b (layer 1)
    assert len(quantized) == len(scales) == 3 * (5 + 3 + 4 * 3) + 1

    # the experts of layer 1, holding our bytes, run on the CPU
    module = skeleton.get_submodule("model.layers.1.mlp.experts")
    module.to_empty(device="cpu")
    with torch.no_grad():
        for leaf, param in module.named_parameters(recurse=False):
            param.copy_(_expected(f"model.layers.1.mlp.experts.{leaf}", stored)[0])
    monkeypatch.setattr(hub_kernels, "_kernels_enabled", False)
    hidden = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    top_k = torch.tensor([[0, 1], [2, 3], [1, 2]])
    with pytest.raises(ImportError) as raised:
        module(hidden, top_k, torch.full((3, 2), 0.5, dtype=torch.bfloat16))
    if hub_kernels.is_kernels_available():
        want = (
            "Failed to load the finegrained-fp8 kernel — check that "
            "`kernels-community/finegrained-fp8` has a build matching the current torch/CUDA."
        )
    else:
        want = f"finegrained-fp8 kernel unavailable: {hub_kernels._MISSING_KERNELS_MESSAGE}"
    assert str(raised.value) == want
