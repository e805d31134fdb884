"""FP8 block weights of any layout read back as float32: which scale goes with which weight
(DeepSeek ``weight_scale_inv``, compressed-tensors ``weight_scale``, V4 ``scale``, MXFP8 U8 in
any shard), and ``decode(codes) * scale`` computed in float32 (never through bf16)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.layout import (
    FMT_OF_TAG,
    SCALE_TAGS,
    config_block,
    decode_scale,
    element_fmt,
    infer_block,
    scale_candidates,
)
from ue8m0.checkpoint.safetensors import FP8_TAGS, SafetensorsFile
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.errors import CheckpointError
from ue8m0.policies import ScaleRule


@dataclass(frozen=True)
class Fp8Weight:
    """An FP8 weight, its scale tensor (and shard), block and element format name."""

    name: str
    scale: str
    scale_shard: str
    scale_dtype: str
    block: tuple[int, int]
    fmt: str


def find_fp8_weights(ckpt: Checkpoint) -> dict[str, Fp8Weight]:
    """Every FP8 weight of ``ckpt`` with its scale; a one-line error for any that has none, a
    scale of an unknown dtype, or a scale grid that fits no block."""
    declared = config_block(ckpt.config)
    found: dict[str, Fp8Weight] = {}
    for info in ckpt.tensors.values():
        if info.dtype not in FP8_TAGS:
            continue
        scale = next((s for s in scale_candidates(info.name) if s in ckpt.tensors), None)
        path = ckpt.path(ckpt.weight_map[info.name])
        if scale is None:
            raise CheckpointError(
                path,
                f"FP8 tensor without a scale (looked for {', '.join(scale_candidates(info.name))})",
                info.name,
            )
        sinfo = ckpt.tensors[scale]
        if sinfo.dtype not in SCALE_TAGS:
            raise CheckpointError(
                ckpt.path(ckpt.weight_map[scale]),
                f"scale dtype {sinfo.dtype} is not one of {SCALE_TAGS}",
                scale,
            )
        if len(info.shape) < 2:
            raise CheckpointError(
                path, f"FP8 tensor of shape {info.shape}: need >= 2 dims", info.name
            )
        block = infer_block(info.shape, sinfo.shape, declared)
        if block is None:
            raise CheckpointError(
                path,
                f"scale {scale} of shape {sinfo.shape} does not fit a block grid of {info.shape}",
                info.name,
            )
        found[info.name] = Fp8Weight(
            info.name, scale, ckpt.weight_map[scale], sinfo.dtype, block, FMT_OF_TAG[info.dtype]
        )
    return found


def load_scale(root: Path, weight: Fp8Weight) -> np.ndarray:
    """The float32 dequant multipliers of ``weight``, shaped ``(experts, grid rows, grid cols)``."""
    with SafetensorsFile(root / weight.scale_shard) as f:
        info = f.info(weight.scale)
        scale = decode_scale(f.read(weight.scale), info.dtype)
    return scale.reshape(-1, *scale.shape[-2:])


def dequantize_rows(
    codes: np.ndarray,
    scale: np.ndarray,
    block: tuple[int, int],
    fmt: str,
    r0: int,
    threads: int | None = None,
) -> np.ndarray:
    """float32 ``decode(codes) * scale`` of rows ``r0 : r0 + len(codes)`` of one matrix whose
    scale grid is ``scale`` (2-D, the whole matrix's)."""
    el = element_fmt(fmt)
    br, bc = block
    rows = codes.shape[-2]
    if r0 % br == 0:
        s = scale[r0 // br : -(-(r0 + rows) // br)]
        q = QuantizedTensor(codes.view(el.dtype), s, None, el, block, ScaleRule.FP32)
        return dequantize(q, np.float32, threads=threads)
    s = scale[(np.arange(r0, r0 + rows) // br)][:, np.arange(codes.shape[-1]) // bc]
    values = codes.view(el.dtype).astype(np.float32)
    return values * s.astype(np.float32)


class Fp8Reader:
    """Random access to the dequantized rows of a checkpoint's FP8 weights (one scale cached)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.weights = find_fp8_weights(ckpt)
        self._cached: tuple[str, np.ndarray] | None = None

    def scale(self, name: str) -> np.ndarray:
        if self._cached is None or self._cached[0] != name:
            self._cached = (name, load_scale(self.ckpt.root, self.weights[name]))
        return self._cached[1]

    def rows(self, f: SafetensorsFile, name: str, lead: int, r0: int, r1: int) -> np.ndarray:
        """float32 rows ``r0:r1`` of matrix ``lead`` of FP8 weight ``name`` (open in ``f``)."""
        w = self.weights[name]
        codes = f.read_rows(name, lead, r0, r1)
        return dequantize_rows(codes, self.scale(name)[lead], w.block, w.fmt, r0)
