"""Cross-checks against the peers that run on CPU: torchao ``to_mx`` and DeepGEMM's reference casts.

DeepGEMM's casts (``deep_gemm/utils/math.py``) need only torch; they are transcribed here as
test-only peers, line for line in behaviour (pad with zeros, amax in float32 clamped to 1e-4,
``sf = amax / 448``, ``ceil_to_ue8m0`` from the exponent bits clamped to [1, 254],
``x * (1 / sf)`` cast with torch's saturating RNE cast).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.mx_tensor import to_mx

import ue8m0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _deepgemm_ceil_to_ue8m0(x: torch.Tensor) -> torch.Tensor:
    bits = x.abs().float().view(torch.int)
    exp = ((bits >> 23) & 0xFF) + (bits & 0x7FFFFF).bool().int()
    return (exp.clamp(1, 254) << 23).view(torch.float)


def deepgemm_per_token_cast(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128):  # type: ignore[no-untyped-def]
    m, n = x.shape
    padded_n = _ceil_div(n, gran_k) * gran_k
    x_padded = torch.zeros((m, padded_n), dtype=x.dtype)
    x_padded[:, :n] = x
    x_view = x_padded.view(m, padded_n // gran_k, gran_k)
    x_amax = x_view.abs().float().amax(dim=2).view(m, padded_n // gran_k).clamp(1e-4)
    sf = x_amax / 448.0
    sf = _deepgemm_ceil_to_ue8m0(sf) if use_ue8m0 else sf
    x_fp8 = (x_view * (1.0 / sf.unsqueeze(2))).to(torch.float8_e4m3fn)
    return x_fp8.view(m, padded_n)[:, :n].contiguous(), sf


def deepgemm_per_block_cast(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128):  # type: ignore[no-untyped-def]
    m, n = x.shape
    x_padded = torch.zeros(
        (_ceil_div(m, gran_k) * gran_k, _ceil_div(n, gran_k) * gran_k), dtype=x.dtype
    )
    x_padded[:m, :n] = x
    x_view = x_padded.view(-1, gran_k, x_padded.size(1) // gran_k, gran_k)
    x_amax = x_view.abs().float().amax(dim=(1, 3), keepdim=True).clamp(1e-4)
    sf = x_amax / 448.0
    sf = _deepgemm_ceil_to_ue8m0(sf) if use_ue8m0 else sf
    x_scaled = (x_view * (1.0 / sf)).to(torch.float8_e4m3fn)
    return x_scaled.view_as(x_padded)[:m, :n].contiguous(), sf.view(x_view.size(0), x_view.size(2))


def _inputs(seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Shapes with partial blocks, wide dynamic range, zero and tiny blocks, exact powers of two."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for m, n in [(256, 384), (200, 300), (1, 129), (130, 128)]:
        x = torch.randn(m, n, generator=g)
        x *= torch.exp2(torch.randint(-20, 20, (m, 1), generator=g).float())
        x[: min(m, 128), :128] = 0  # a zero block
        if m > 1:
            x[-1, -5:] = 2.0 ** torch.arange(-3, 2).float() * 448  # exact scale boundaries
        x[0, -3:] = torch.tensor([1e-5, -3e-5, 7e-6])  # below eps
        out.append(x.to(dtype))
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_ue8m0", [True, False], ids=["rceil", "fp32"])
@pytest.mark.parametrize("kind", ["per_token", "per_block"])
def test_deepgemm_reference_casts(kind: str, use_ue8m0: bool, dtype: torch.dtype) -> None:
    cast = deepgemm_per_token_cast if kind == "per_token" else deepgemm_per_block_cast
    block = (1, 128) if kind == "per_token" else (128, 128)
    for seed in range(3):
        for x in _inputs(seed, dtype):
            ref_fp8, ref_sf = cast(x, use_ue8m0)
            for backend in ("reference", "auto"):
                q = ue8m0.quantize(
                    _np(x),
                    block=block,
                    scale_rule="rceil" if use_ue8m0 else "fp32",
                    backend=backend,
                )
                assert np.array_equal(q.codes, ref_fp8.view(torch.uint8).numpy())
                assert np.array_equal(q.scale.view(np.uint32), ref_sf.numpy().view(np.uint32))
                # torch also takes the tensor directly
                q2 = ue8m0.quantize(
                    x, block=block, scale_rule="rceil" if use_ue8m0 else "fp32", backend=backend
                )
                assert np.array_equal(q2.codes, q.codes)


MODES = {
    "floor": ScaleCalculationMode.FLOOR,
    "rceil": ScaleCalculationMode.RCEIL,
    "ceil": ScaleCalculationMode.CEIL,
    "even": ScaleCalculationMode.EVEN,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rule", list(MODES))
def test_torchao_to_mx_e4m3(rule: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    for shape in [(64, 256), (3, 8, 96)]:
        x = torch.randn(*shape, generator=g) * torch.exp2(
            torch.randint(-30, 30, (*shape[:-1], 1), generator=g).float()
        )
        x.view(-1, 32)[::5] = 0  # zero blocks
        x.view(-1, 32)[1::7] *= 1e4  # blocks whose max saturates under floor
        x = x.to(dtype)
        scale, data = to_mx(x, torch.float8_e4m3fn, 32, MODES[rule])
        for backend in ("reference", "auto"):
            q = ue8m0.quantize(_np(x), block=(1, 32), scale_rule=rule, eps=0, backend=backend)
            assert np.array_equal(q.scale_codes, scale.view(torch.uint8).numpy()), rule
            assert np.array_equal(q.codes, data.view(torch.uint8).numpy()), rule


def test_torch_tensor_input_dtypes() -> None:
    x = torch.randn(4, 64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q = ue8m0.quantize(x.to(dtype), block=(1, 32))
        ref = ue8m0.quantize(_np(x.to(dtype)), block=(1, 32))
        assert np.array_equal(q.codes, ref.codes)
    with pytest.raises(ue8m0.InputTypeError, match="int64"):
        ue8m0.quantize(torch.ones(2, 2, dtype=torch.int64))
