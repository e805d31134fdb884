"""FP8 layers for PyTorch models: :class:`FP8Linear` and :func:`quantize_model`.

The only module of the package that imports torch (the ``torch`` extra). Weights are quantized
once with a :class:`~ue8m0.recipes.Recipe` (codes and scales kept as buffers, the dequantized
float32 weight stored for the forward); inputs are optionally fake-quantized per 1×128 tile
(1×32 for MX recipes) on every call, bit-exact with :func:`ue8m0.quantize` (tested).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ue8m0.api import dequantize
from ue8m0.api import quantize as _quantize
from ue8m0.formats import ElementFormat
from ue8m0.policies import ScaleRule
from ue8m0.recipes import Recipe, get_recipe
from ue8m0.reference import decode_scale_bytes, scale_bytes

__all__ = ["FP8Linear", "activation_block", "fake_quantize_activations", "quantize_model"]


def activation_block(recipe: Recipe) -> tuple[int, int]:
    """The dynamic input tile of a recipe: ``(1, 32)`` for 1×32 (MX) recipes, else ``(1, 128)``."""
    return (1, 32) if recipe.block[1] == 32 else (1, 128)


def _torch_fp8(fmt: ElementFormat) -> torch.dtype | None:
    """The torch dtype with ``fmt``'s encoding, if torch has one (FP8 formats)."""
    dtype = getattr(torch, fmt.name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _block_scales(
    amax: np.ndarray, fmt: ElementFormat, rule: ScaleRule, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-block ``(scale, multiplier)`` in float32, as :func:`ue8m0.quantize` computes them."""
    a = np.maximum(amax.astype(np.float32), np.float32(eps))
    if rule.is_power_of_two:
        codes = scale_bytes(a, fmt, rule)
        multiplier = np.ldexp(np.float32(1.0), 127 - codes.astype(np.int32)).astype(np.float32)
        return decode_scale_bytes(codes), multiplier
    scale = (a / np.float32(fmt.max)).astype(np.float32)
    with np.errstate(divide="ignore"):
        multiplier = (np.float32(1.0) / scale).astype(np.float32)
    return scale, np.where(scale == 0, np.float32(0), multiplier).astype(np.float32)


def fake_quantize_activations(x: torch.Tensor, recipe: str | Recipe) -> torch.Tensor:
    """``dequantize(quantize(x, block=activation_block(recipe), ...))`` as float32, in torch.

    Vectorised in torch for FP8 element formats (the block amax, the element rounding); the
    scale bytes come from the numpy oracle's rule on the small amax grid. Other formats, and
    inputs with NaN or Inf (which :func:`ue8m0.quantize` rejects), go through the numpy API.
    """
    r = get_recipe(recipe)
    block = activation_block(r)
    k = x.shape[-1]
    x2 = x.detach().reshape(-1, k).float()
    if x2.numel() == 0:
        return x.float()
    fp8 = _torch_fp8(r.fmt)
    bc = block[1]
    nb = -(-k // bc)
    padded = F.pad(x2, (0, nb * bc - k)).reshape(-1, nb, bc)
    amax = padded.abs().amax(dim=-1).cpu().numpy()  # NaN or Inf here iff the block has one
    if fp8 is None or not np.isfinite(amax).all() or r.scale_rule is ScaleRule.FP32_DIV:
        q = _quantize(x2.cpu().numpy(), block, r.fmt, r.scale_rule, r.eps)
        return torch.from_numpy(dequantize(q)).to(x.device).reshape(x.shape)
    scale_np, mult_np = _block_scales(amax, r.fmt, r.scale_rule, r.eps)
    scale = torch.from_numpy(scale_np).to(x.device).unsqueeze(-1)
    mult = torch.from_numpy(mult_np).to(x.device).unsqueeze(-1)
    top = float(r.fmt.max)
    codes = (padded * mult).clamp_(-top, top).to(fp8)  # clamp + RNE cast = saturating RNE
    out = codes.float() * scale
    # contiguous: a strided input can take another GEMM path in F.linear (other rounding)
    return out.reshape(-1, nb * bc)[:, :k].reshape(x.shape).contiguous()


class FP8Linear(nn.Module):
    """A drop-in :class:`torch.nn.Linear` whose weight is stored quantized with a recipe.

    Buffers: ``weight_codes`` (uint8 element codes), ``weight_scale`` (float32 scale grid),
    ``weight_scale_codes`` (UE8M0 bytes, None for the ``fp32`` rule) and ``weight``, the
    dequantized float32 weight the forward uses (computed once). Only ``weight`` and ``bias``
    are in the state dict, so its keys and shapes stay those of the original layer.

    With ``activations=True`` each input is fake-quantized dynamically per 1×128 tile (1×32
    for MX recipes) with the recipe's element format, scale rule and eps. The product is
    ``F.linear`` in float32, cast back to the input's dtype.
    """

    weight: torch.Tensor
    weight_codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_codes: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        recipe: str | Recipe = "rceil",
        activations: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        init = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(init.weight, init.bias, get_recipe(recipe), activations)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, recipe: str | Recipe = "rceil", activations: bool = False
    ) -> FP8Linear:
        """Quantize an existing layer's weight (the layer itself is not changed)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(linear.weight, linear.bias, get_recipe(recipe), activations)
        return layer

    def _setup(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        recipe: Recipe,
        activations: bool,
    ) -> None:
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.recipe = recipe
        self.activations = bool(activations)
        w = weight.detach().float().cpu().numpy()
        q = recipe.quantize(w)
        device = weight.device
        self.register_buffer("weight", torch.from_numpy(dequantize(q)).to(device))
        self.register_buffer("weight_codes", torch.from_numpy(q.codes.copy()).to(device), False)
        self.register_buffer("weight_scale", torch.from_numpy(q.scale.copy()).to(device), False)
        codes = None if q.scale_codes is None else torch.from_numpy(q.scale_codes.copy())
        self.register_buffer(
            "weight_scale_codes", None if codes is None else codes.to(device), False
        )
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear(q(x), dequantize(W), b)`` in float32, in ``x``'s dtype."""
        xf = fake_quantize_activations(x, self.recipe) if self.activations else x.float()
        bias = None if self.bias is None else self.bias.float()
        return F.linear(xf, self.weight, bias).to(x.dtype)

    def extra_repr(self) -> str:
        act = f", activations={activation_block(self.recipe)}" if self.activations else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, recipe={self.recipe.label!r}{act}"
        )


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(
        name == p
        or fnmatch.fnmatchcase(name, p)
        or name.endswith("." + p)
        or name.startswith(p + ".")
        for p in patterns
    )


def quantize_model(
    model: nn.Module,
    recipe: str | Recipe,
    exclude: Iterable[str] | str = (),
    activations: bool = False,
) -> list[str]:
    """Replace every :class:`torch.nn.Linear` of ``model`` in place by an :class:`FP8Linear`.

    ``exclude`` holds module names to leave alone: a name matches a pattern when it equals it,
    matches it as a glob (``*.attention.*``), ends with ``"." + pattern`` (``lm_head``,
    ``pooler.dense``) or lies under it (``encoder.layer.0``). Returns the replaced names, in
    module order.
    """
    r = get_recipe(recipe)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name and not _excluded(name, patterns)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(module, r, activations))
    return [name for name, _ in targets]
