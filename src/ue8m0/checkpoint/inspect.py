"""``inspect``: what a checkpoint is — format, tensors by dtype and role, sizes, quantization
parameters and scale statistics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.pairs import pair_fp8_weights, read_scale
from ue8m0.checkpoint.registry import detect_layout, is_scale_name
from ue8m0.checkpoint.safetensors import FP8_TAGS, TensorInfo
from ue8m0.checkpoint.scales import SCALE_TAGS, infer_block, is_power_of_two
from ue8m0.checkpoint.source import Checkpoint, open_checkpoint


def _role(info: TensorInfo, scales: set[str], fp4: set[str]) -> str:
    if info.dtype in FP8_TAGS:
        return "fp8 weight"
    if info.name in fp4:
        return "fp4 weight (packed E2M1)"
    if info.name in scales:
        return "scale"
    if is_scale_name(info.name):
        return "orphan scale"
    if len(info.shape) >= 2:
        return "high-precision matrix"
    return "vector (norm, bias, ...)"


def detect_format(
    ckpt: Checkpoint, scale_tags: Counter[str], blocks: set[tuple[int, int]], pow2: bool
) -> str:
    """The detected layout's title (asking each registered layout), and whether its scales are
    powers of two."""
    if not scale_tags:
        return "high precision (no FP8 weights)"
    qc = (ckpt.config or {}).get("quantization_config") or {}
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    layout = detect_layout(method, [n for n in ckpt.tensors if is_scale_name(n)], blocks)
    if layout is None:
        return "FP8 of an unknown layout"
    if layout.fixed_block:
        return layout.title
    scales = "UE8M0 (power-of-two) scales" if pow2 else "non-power-of-two scales"
    return f"{layout.title}, {scales}"


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """A JSON-able description of the checkpoint at ``path``."""
    ckpt = open_checkpoint(path)
    found = pair_fp8_weights(ckpt)
    declared = found.declared
    pairs = {weight: scale for scale, weight in found.scales.items()}
    fp4 = {name for name, w in found.weights.items() if w.packed}
    by_dtype: dict[str, dict[str, int]] = {}
    by_role: dict[str, dict[str, int]] = {}
    for info in ckpt.tensors.values():
        for table, key in (
            (by_dtype, info.dtype),
            (by_role, _role(info, set(pairs.values()), fp4)),
        ):
            row = table.setdefault(key, {"tensors": 0, "bytes": 0, "elements": 0})
            row["tensors"] += 1
            row["bytes"] += info.nbytes
            row["elements"] += int(np.prod(info.shape, dtype=np.int64))
    scale_tags: Counter[str] = Counter()
    blocks: set[tuple[int, int]] = set()
    exps: list[np.ndarray] = []
    count = pow2_count = 0
    for weight, scale in pairs.items():
        sinfo = ckpt.tensors[scale]
        scale_tags[sinfo.dtype] += 1
        block = infer_block(ckpt.tensors[weight].shape, sinfo.shape, declared)
        if block is not None:
            blocks.add(block)
        if sinfo.dtype not in SCALE_TAGS:
            continue
        values = read_scale(ckpt, scale).reshape(-1)
        count += values.size
        pow2_count += int(np.count_nonzero(is_power_of_two(values)))
        with np.errstate(divide="ignore", invalid="ignore"):
            exps.append(np.log2(values[np.isfinite(values) & (values > 0)]))
    stats: dict[str, Any] = {
        "scale_tensors": sum(scale_tags.values()),
        "scales": count,
        "dtypes": dict(scale_tags),
    }
    if count:
        e = np.concatenate(exps)
        stats.update(
            {
                "power_of_two_fraction": pow2_count / count,
                "log2_min": float(e.min()),
                "log2_median": float(np.median(e)),
                "log2_max": float(e.max()),
            }
        )
    total = sum(t.nbytes for t in ckpt.tensors.values())
    return {
        "path": str(path),
        "format": detect_format(ckpt, scale_tags, blocks, bool(count) and pow2_count == count),
        "shards": len(ckpt.shards),
        "tensors": len(ckpt.tensors),
        "bytes": total,
        "by_dtype": by_dtype,
        "by_role": by_role,
        "blocks": sorted([list(b) for b in blocks]),
        "quantization_config": (ckpt.config or {}).get("quantization_config"),
        "scale_stats": stats,
    }
