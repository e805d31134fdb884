"""The one FP8-pair finder: which scale goes with which FP8 weight, in any registered layout and
any shard, and the one place stored scales are read and decoded.

Used by ``inspect``, ``verify``, ``dequantize``, ``requantize``, ``relayout`` and ``report``.
:func:`pair_fp8_weights` collects every problem (``verify`` lists them);
:func:`find_fp8_weights` raises the first one (the converters refuse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ue8m0.checkpoint.registry import (
    FMT_OF_TAG,
    FP4,
    FP4_TAGS,
    MX_BLOCK,
    expert_dtype,
    scale_candidates,
)
from ue8m0.checkpoint.safetensors import FP8_TAGS, SafetensorsFile, TensorInfo
from ue8m0.checkpoint.scales import SCALE_TAGS, config_block, decode_scale, infer_block
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.errors import CheckpointError


@dataclass(frozen=True)
class Fp8Weight:
    """An FP8 weight, its scale tensor (and shard), the scale's dtype tag, block and element
    format name."""

    name: str
    scale: str
    scale_shard: str
    scale_dtype: str
    block: tuple[int, int]
    fmt: str

    @property
    def packed(self) -> bool:
        """Packed FP4 (two E2M1 codes per stored byte)."""
        return self.fmt == FP4

    def logical_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """The weight's shape from its stored one (packed FP4 holds two inputs per byte)."""
        return (*stored[:-1], stored[-1] * 2) if self.packed else stored


@dataclass(frozen=True)
class PairProblem:
    """Why an FP8 weight has no usable scale: ``tensor`` is the one to name (the weight, or its
    scale), ``shard`` where it is."""

    tensor: str
    shard: str
    reason: str

    def error(self, ckpt: Checkpoint) -> CheckpointError:
        return CheckpointError(ckpt.path(self.shard), self.reason, self.tensor)


@dataclass
class Fp8Pairs:
    """Every FP8 weight of a checkpoint with its scale, and what went wrong for the others."""

    weights: dict[str, Fp8Weight] = field(default_factory=dict)
    problems: list[PairProblem] = field(default_factory=list)
    #: every scale tensor an FP8 weight points at (usable or not) -> that weight
    scales: dict[str, str] = field(default_factory=dict)
    declared: tuple[int, int] | None = None


def pair_fp8_weights(ckpt: Checkpoint) -> Fp8Pairs:
    """Pair every FP8 weight of ``ckpt`` with its scale (looked up under each registered
    layout's name for it, in any shard); collect the weights that have no usable one."""
    found = Fp8Pairs(declared=config_block(ckpt.config))
    fp4_declared = expert_dtype(ckpt.config) == "fp4"
    for info in ckpt.tensors.values():
        if info.dtype in FP4_TAGS:
            _pair_fp4(ckpt, info, fp4_declared, found)
            continue
        if info.dtype not in FP8_TAGS:
            continue
        shard = ckpt.weight_map[info.name]
        candidates = scale_candidates(info.name)
        scale = next((s for s in candidates if s in ckpt.tensors), None)
        if scale is None:
            why = f"FP8 tensor without a scale (looked for {', '.join(candidates)})"
            found.problems.append(PairProblem(info.name, shard, why))
            continue
        found.scales[scale] = info.name
        sinfo = ckpt.tensors[scale]
        sshard = ckpt.weight_map[scale]
        if sinfo.dtype not in SCALE_TAGS:
            why = f"scale dtype {sinfo.dtype} is not one of {SCALE_TAGS}"
            found.problems.append(PairProblem(scale, sshard, why))
            continue
        if len(info.shape) < 2:
            why = f"FP8 tensor of shape {info.shape}: need >= 2 dims"
            found.problems.append(PairProblem(info.name, shard, why))
            continue
        block = infer_block(info.shape, sinfo.shape, found.declared)
        if block is None:
            why = f"scale {scale} of shape {sinfo.shape} does not fit a block grid of {info.shape}"
            found.problems.append(PairProblem(info.name, shard, why))
            continue
        found.weights[info.name] = Fp8Weight(
            info.name, scale, sshard, sinfo.dtype, block, FMT_OF_TAG[info.dtype]
        )
    return found


def _pair_fp4(ckpt: Checkpoint, info: TensorInfo, declared: bool, found: Fp8Pairs) -> None:
    """A packed FP4 weight (I8 ``[out, in/2]``) with its F8_E8M0 scale ``[out, in/32]``: an
    integer tensor with a scale is one, and must be declared by ``expert_dtype: fp4``."""
    scale = next((s for s in scale_candidates(info.name) if s in ckpt.tensors), None)
    if scale is None:
        return  # an integer tensor of its own (token tables, ...)
    shard = ckpt.weight_map[info.name]
    found.scales[scale] = info.name
    sinfo = ckpt.tensors[scale]
    if not declared:
        why = (
            f"{info.dtype} weight with a scale ({scale}) looks like packed FP4, but config.json "
            "does not declare expert_dtype: fp4"
        )
        found.problems.append(PairProblem(info.name, shard, why))
        return
    if sinfo.dtype not in ("F8_E8M0", "U8"):
        why = f"FP4 scale dtype {sinfo.dtype}: expected F8_E8M0 (one byte per 32 inputs)"
        found.problems.append(PairProblem(scale, ckpt.weight_map[scale], why))
        return
    shape = info.shape
    want = (*shape[:-1], shape[-1] * 2 // MX_BLOCK[1]) if len(shape) >= 2 else None
    if want is None or (shape[-1] * 2) % MX_BLOCK[1] or tuple(sinfo.shape) != want:
        why = (
            f"packed FP4 weight {list(shape)} needs a scale of shape "
            f"{list(want) if want else '[..., out, in/32]'}, got {list(sinfo.shape)} ({scale})"
        )
        found.problems.append(PairProblem(info.name, shard, why))
        return
    found.weights[info.name] = Fp8Weight(
        info.name, scale, ckpt.weight_map[scale], sinfo.dtype, MX_BLOCK, FP4
    )


def find_fp8_weights(ckpt: Checkpoint) -> dict[str, Fp8Weight]:
    """Every FP8 weight of ``ckpt`` with its scale; a one-line error for the first that has
    none, a scale of an unknown dtype, or a scale grid that fits no block."""
    pairs = pair_fp8_weights(ckpt)
    if pairs.problems:
        raise pairs.problems[0].error(ckpt)
    return pairs.weights


def read_scale(ckpt: Checkpoint, name: str) -> np.ndarray:
    """The stored scale tensor ``name`` of ``ckpt`` as float32 dequant multipliers."""
    return _read(ckpt.path(ckpt.weight_map[name]), name)


def load_scale(root: Path, weight: Fp8Weight, opened: SafetensorsFile | None = None) -> np.ndarray:
    """The float32 dequant multipliers of ``weight``, shaped ``(experts, grid rows, grid cols)``
    (read through ``opened`` when that is the scale's shard)."""
    path = root / weight.scale_shard
    if opened is not None and opened.path == path:
        scale = _decode(opened, weight.scale)
    else:
        scale = _read(path, weight.scale)
    return scale.reshape(-1, *scale.shape[-2:])


def _read(path: Path, name: str) -> np.ndarray:
    with SafetensorsFile(path) as f:
        return _decode(f, name)


def _decode(f: SafetensorsFile, name: str) -> np.ndarray:
    return decode_scale(f.read(name), f.info(name).dtype)


def load_scale_bytes(
    root: Path, weight: Fp8Weight, opened: SafetensorsFile | None = None
) -> np.ndarray:
    """The stored UE8M0 bytes (uint8) of a byte-scale weight (F8_E8M0 or U8), as stored."""
    path = root / weight.scale_shard
    if opened is not None and opened.path == path:
        raw = opened.read(weight.scale)
    else:
        with SafetensorsFile(path) as f:
            raw = f.read(weight.scale)
    return raw.view(np.uint8)
