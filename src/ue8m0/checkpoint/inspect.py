"""``inspect``: what a checkpoint is — format, tensors by dtype and role, sizes, quantization
parameters and scale statistics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.pairs import pair_fp8_weights
from ue8m0.checkpoint.registry import detect_layout, is_scale_name
from ue8m0.checkpoint.safetensors import FP8_TAGS, TensorInfo
from ue8m0.checkpoint.scales import BYTE_SCALE_TAGS, SCALE_TAGS, decode_scale, is_power_of_two
from ue8m0.checkpoint.source import Checkpoint, open_checkpoint
from ue8m0.checkpoint.verify import stored_pieces


def _role(info: TensorInfo, scales: set[str], fp4: set[str], row_groups: dict[str, int]) -> str:
    if info.name in row_groups:
        return f"fp8 weight (1x{row_groups[info.name]} row-group scales)"
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


class Log2Counts:
    """log2 of every stored scale, for their min, median and max (as ``np.median`` gives them on
    the values themselves). Byte scales (UE8M0) are counted by value, so memory stays bounded
    however many a checkpoint stores (a DeepSeek-V4 release: billions, one per 32 FP4 inputs);
    float scales (one per block, far fewer) are kept as they are."""

    def __init__(self) -> None:
        self.count = self.pow2 = 0
        self.byte_counts = np.zeros(256, dtype=np.int64)
        self.logs: list[np.ndarray] = []

    def add(self, piece: np.ndarray, tag: str) -> None:
        """A piece of a stored scale tensor (as stored, dtype ``tag``)."""
        self.count += piece.size
        if tag in BYTE_SCALE_TAGS:  # 2**(b - 127): a power of two unless NaN (0xFF)
            self.byte_counts += np.bincount(piece.view(np.uint8), minlength=256)
            self.pow2 += piece.size - int(np.count_nonzero(piece.view(np.uint8) == 0xFF))
            return
        values = decode_scale(piece, tag)
        self.pow2 += int(np.count_nonzero(is_power_of_two(values)))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.logs.append(np.log2(values[np.isfinite(values) & (values > 0)]).astype(np.float64))

    def summary(self) -> dict[str, float]:
        """``log2_min``, ``log2_median`` and ``log2_max`` of the positive finite scales (empty
        when there are none)."""
        logs = np.concatenate([np.empty(0), *self.logs])
        values = np.concatenate([np.arange(255, dtype=np.float64) - 127, logs])
        counts = np.concatenate([self.byte_counts[:255], np.ones(logs.size, dtype=np.int64)])
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        values, counts = values[counts > 0], counts[counts > 0]
        if not counts.size:
            return {}
        cum, n = np.cumsum(counts), int(counts.sum())
        middle = [values[np.searchsorted(cum, k, side="right")] for k in ((n - 1) // 2, n // 2)]
        return {
            "log2_min": float(values[0]),
            "log2_median": float((middle[0] + middle[1]) / 2),
            "log2_max": float(values[-1]),
        }


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
    # FP8 weights with one scale per row per group, beside another (or no) declared block:
    # DeepSeek-V4.1's Engram tables (an MXFP8 checkpoint declares its 1x32 and is plain FP8)
    row_groups = {
        name: w.block[1]
        for name, w in found.weights.items()
        if not w.packed and w.block[0] == 1 and w.block != declared
    }
    by_dtype: dict[str, dict[str, int]] = {}
    by_role: dict[str, dict[str, int]] = {}
    for info in ckpt.tensors.values():
        for table, key in (
            (by_dtype, info.dtype),
            (by_role, _role(info, set(pairs.values()), fp4, row_groups)),
        ):
            row = table.setdefault(key, {"tensors": 0, "bytes": 0, "elements": 0})
            row["tensors"] += 1
            row["bytes"] += info.nbytes
            row["elements"] += int(np.prod(info.shape, dtype=np.int64))
    scale_tags: Counter[str] = Counter()
    blocks = {w.block for w in found.weights.values()}
    exps = Log2Counts()
    for scale in pairs.values():
        tag = ckpt.tensors[scale].dtype
        scale_tags[tag] += 1
        if tag in SCALE_TAGS:
            for piece in stored_pieces(ckpt, scale):
                exps.add(piece, tag)
    stats: dict[str, Any] = {
        "scale_tensors": sum(scale_tags.values()),
        "scales": exps.count,
        "dtypes": dict(scale_tags),
    }
    if exps.count:
        stats["power_of_two_fraction"] = exps.pow2 / exps.count
        stats.update(exps.summary())
    total = sum(t.nbytes for t in ckpt.tensors.values())
    return {
        "path": str(path),
        "format": detect_format(
            ckpt, scale_tags, blocks, bool(exps.count) and exps.pow2 == exps.count
        ),
        "shards": len(ckpt.shards),
        "tensors": len(ckpt.tensors),
        "bytes": total,
        "by_dtype": by_dtype,
        "by_role": by_role,
        "blocks": sorted([list(b) for b in blocks]),
        "quantization_config": (ckpt.config or {}).get("quantization_config"),
        "scale_stats": stats,
    }
