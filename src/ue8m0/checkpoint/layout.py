"""Naming and config conventions of FP8 block checkpoints (DeepSeek, compressed-tensors, V4).

What a scale tensor is called, which tensors converters leave in high precision, the
``quantization_config`` loaders read, and how a scale grid maps back to a block shape.
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.errors import CheckpointError
from ue8m0.formats import ElementFormat, element_format
from ue8m0.reference import decode_scale_bytes

#: ``--fmt`` name -> (element format name, safetensors tag, config ``fmt``)
FMTS: dict[str, tuple[str, str]] = {
    "e4m3": ("float8_e4m3fn", "F8_E4M3"),
    "e5m2": ("float8_e5m2", "F8_E5M2"),
}
#: safetensors tag of an FP8 weight -> ``--fmt`` name
FMT_OF_TAG = {tag: name for name, (_, tag) in FMTS.items()}

#: ``--scale-dtype`` -> safetensors tag of the stored scale
SCALE_DTYPES = {"f32": "F32", "e8m0": "F8_E8M0", "u8": "U8"}
#: tags a scale may be stored in when reading
SCALE_TAGS = ("F32", "BF16", "F16", "U8", "F8_E8M0")

#: names the DeepSeek layout writes and the other layouts use for a weight's scale
SCALE_SUFFIX_DEEPSEEK = "_scale_inv"
#: compressed-tensors names a weight's scale ``X.weight_scale``
SCALE_SUFFIX_CT = "_scale"

#: output layouts: DeepSeek-V3.1 (``weight_scale_inv``), compressed-tensors ``float-quantized``
#: block (``weight_scale``), MXFP8 (1x32 groups, U8 ``weight_scale_inv``, as SGLang/miles write)
OUT_FORMATS = ("deepseek", "compressed-tensors", "mxfp8")
#: the MX group: one scale per 32 elements of a row
MX_BLOCK = (1, 32)

#: (pattern, reason) of tensors kept in high precision by default (slime/miles/DeepSeek list)
DEFAULT_KEEP: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"embed|wte\.|wpe\.", re.I), "embedding"),
    (re.compile(r"(^|\.)lm_head\.|shared_head\.head\.|(^|\.)output\.weight$"), "output head"),
    (re.compile(r"norm|(^|\.)ln_", re.I), "norm"),
    (
        re.compile(r"(^|\.)(mlp|ffn|block_sparse_moe)\.gate\.|router|e_score_correction_bias"),
        "MoE router",
    ),
    (re.compile(r"eh_proj|weights_proj"), "kept by DeepSeek converters"),
]


def element_fmt(name: str) -> ElementFormat:
    """The element format of an ``--fmt`` name."""
    if name not in FMTS:
        raise CheckpointError("--fmt", f"unknown format {name!r}; known: {', '.join(FMTS)}")
    return element_format(FMTS[name][0])


def scale_candidates(weight: str) -> list[str]:
    """Names a weight's scale may have: DeepSeek, compressed-tensors, DeepSeek-V4."""
    out = [weight + SCALE_SUFFIX_DEEPSEEK, weight + "_scale"]
    if weight.endswith(".weight"):
        out.append(weight[: -len(".weight")] + ".scale")
    return out


def is_scale_name(name: str) -> bool:
    return name.endswith(("_scale_inv", ".weight_scale", ".scale"))


def module_of(name: str) -> str:
    """``a.b.weight`` -> ``a.b``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def default_keep_reason(name: str) -> str | None:
    """Why ``name`` stays high precision by default, or None."""
    for pattern, reason in DEFAULT_KEEP:
        if pattern.search(name):
            return reason
    return None


def fp8_quant_config(
    fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
) -> dict[str, Any]:
    """The DeepSeek-V3.1 ``quantization_config`` that transformers, vLLM and SGLang read."""
    config: dict[str, Any] = {
        "quant_method": "fp8",
        "fmt": fmt,
        "activation_scheme": "dynamic",
        "weight_block_size": [block[0], block[1]],
    }
    if ue8m0:
        config["scale_fmt"] = "ue8m0"
    config["modules_to_not_convert"] = not_converted
    return config


def mxfp8_quant_config(fmt: str, not_converted: list[str]) -> dict[str, Any]:
    """The MXFP8 ``quantization_config`` SGLang reads (and miles' ``convert_hf_to_mxfp8``
    writes): ``quant_method mxfp8``, ``weight_block_size [1, 32]``, ``scale_fmt ue8m0``; vLLM's
    ``mxfp8`` method reads ``quant_method`` and ``modules_to_not_convert``."""
    return {
        "quant_method": "mxfp8",
        "fmt": fmt,
        "activation_scheme": "dynamic",
        "weight_block_size": list(MX_BLOCK),
        "scale_fmt": "ue8m0",
        "modules_to_not_convert": not_converted,
    }


def ct_quant_config(block: tuple[int, int], ignore: list[str]) -> dict[str, Any]:
    """The compressed-tensors ``float-quantized`` block config (llm-compressor's FP8_BLOCK):
    one group targeting ``Linear``, weights ``strategy: block`` with ``block_structure``, dynamic
    per-group-of-128 activations; ``ignore`` lists the modules kept in high precision."""
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": "float-quantized",
                "weights": {
                    "num_bits": 8,
                    "type": "float",
                    "strategy": "block",
                    "block_structure": [block[0], block[1]],
                    "symmetric": True,
                    "dynamic": False,
                },
                "input_activations": {
                    "num_bits": 8,
                    "type": "float",
                    "strategy": "group",
                    "group_size": 128,
                    "symmetric": True,
                    "dynamic": True,
                },
            }
        },
        "ignore": ignore,
    }


def quant_config(
    out_format: str, fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
) -> dict[str, Any]:
    """The ``quantization_config`` of an output layout (:data:`OUT_FORMATS`)."""
    if out_format == "mxfp8":
        return mxfp8_quant_config(fmt, not_converted)
    if out_format == "compressed-tensors":
        return ct_quant_config(block, not_converted)
    return fp8_quant_config(fmt, block, ue8m0, not_converted)


def scale_name(weight: str, out_format: str) -> str:
    """The name an output layout gives ``weight``'s scale."""
    return weight + (
        SCALE_SUFFIX_CT if out_format == "compressed-tensors" else SCALE_SUFFIX_DEEPSEEK
    )


def check_out_format(out_format: str, fmt: str, scale_dtype: str, block: tuple[int, int]) -> None:
    """Refuse combinations a layout's loaders cannot read."""
    if out_format not in OUT_FORMATS:
        raise CheckpointError(
            "--format", f"unknown {out_format!r}; known: {', '.join(OUT_FORMATS)}"
        )
    if out_format == "compressed-tensors":
        if fmt != "e4m3":
            raise CheckpointError("--format", "compressed-tensors float-quantized is e4m3 only")
        if scale_dtype != "f32":
            raise CheckpointError(
                "--scale-dtype", "compressed-tensors block scales are floats: use f32"
            )
    if out_format == "mxfp8":
        if scale_dtype != "u8":
            raise CheckpointError("--scale-dtype", "MXFP8 scales are U8 biased exponents")
        if block != MX_BLOCK:
            raise CheckpointError("--block", f"MXFP8 groups are 1x32, not {block[0]}x{block[1]}")


def config_block(config: dict[str, Any] | None) -> tuple[int, int] | None:
    """The weight block a ``quantization_config`` declares (DeepSeek or compressed-tensors)."""
    qc = (config or {}).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    block = qc.get("weight_block_size")
    if block is None:
        for group in (qc.get("config_groups") or {}).values():
            weights = group.get("weights") if isinstance(group, dict) else None
            if isinstance(weights, dict) and weights.get("block_structure"):
                block = weights["block_structure"]
                break
    if (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(isinstance(b, int) and b > 0 for b in block)
    ):
        return int(block[0]), int(block[1])
    return None


def _infer_dim(size: int, grid: int) -> int | None:
    if grid <= 0 or size <= 0:
        return None
    lo, hi = size / grid, size / (grid - 1) if grid > 1 else math.inf
    power = 1 << max(0, math.ceil(math.log2(lo)))
    if lo <= power < hi:
        return power
    guess = math.ceil(lo)
    return guess if math.ceil(size / guess) == grid else None


def infer_block(
    shape: tuple[int, ...], grid: tuple[int, ...], declared: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The block that maps ``shape`` to the scale ``grid`` (the declared one when it fits)."""
    if len(grid) != len(shape) or tuple(grid[:-2]) != tuple(shape[:-2]):
        return None
    n, k, gn, gk = shape[-2], shape[-1], grid[-2], grid[-1]
    if (
        declared is not None
        and math.ceil(n / declared[0]) == gn
        and math.ceil(k / declared[1]) == gk
    ):
        return declared
    br, bc = _infer_dim(n, gn), _infer_dim(k, gk)
    return None if br is None or bc is None else (br, bc)


def decode_scale(arr: np.ndarray, tag: str) -> np.ndarray:
    """A stored scale as the float32 dequant multiplier (U8/E8M0 are biased exponents)."""
    if tag in ("U8", "F8_E8M0"):
        return decode_scale_bytes(arr.view(np.uint8))
    return np.asarray(arr, dtype=np.float32)


def encode_scale(scale: np.ndarray, codes: np.ndarray | None, dtype_tag: str) -> np.ndarray:
    """A quantized tensor's scale as stored under ``dtype_tag``."""
    if dtype_tag == "F32":
        return scale.astype(np.float32, copy=False)
    assert codes is not None, "byte scales need a power-of-two scale rule"
    if dtype_tag == "U8":
        return codes.astype(np.uint8, copy=False)
    return codes.astype(np.uint8, copy=False).view(ml_dtypes.float8_e8m0fnu)


def is_power_of_two(scale: np.ndarray) -> np.ndarray:
    """Elementwise: a positive finite float32 exact power of two (normal or subnormal)."""
    s = np.asarray(scale, dtype=np.float32)
    bits = s.view(np.uint32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    normal = (exp > 0) & (exp < 255) & (mant == 0)
    subnormal = (exp == 0) & (mant != 0) & ((mant & (mant - 1)) == 0)
    return (bits >> 31 == 0) & (normal | subnormal)


def ue8m0_codes(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, codes)``: where a float32 scale is ``2**e`` with ``-127 <= e <= 127`` (a UE8M0
    value), and its byte ``e + 127`` there (0 elsewhere)."""
    s = np.asarray(scale, dtype=np.float32)
    frac, exp = np.frexp(s.astype(np.float64))
    code = exp.astype(np.int64) + 126
    ok = (frac == 0.5) & (code >= 0) & (code <= 254)
    return ok, np.where(ok, code, 0).astype(np.uint8)
