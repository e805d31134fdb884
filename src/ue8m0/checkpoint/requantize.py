"""``requantize`` and ``relayout``: FP8 block checkpoints to UE8M0 scales or MXFP8.

``requantize`` dequantizes each block in float32 (``decode(codes) * scale``, never through
bf16, vLLM's path rather than SGLang's), quantizes it again with a power-of-two rule (and the
optional per-block MSE search) and writes the DeepSeek-V3.1 or compressed-tensors layout. Blocks
whose scale already is a power of two are copied byte for byte, so an already-UE8M0 checkpoint
comes out identical.

``relayout --to mxfp8`` writes 1x32 groups with U8 biased-exponent scales. From power-of-two
sources it is lossless: by default each group gets its canonical ``rceil`` scale
(``ue8m0.quantize(dequantized, block=(1, 32))``, checked value by value), with ``--scales
repeat`` each source scale byte is repeated and the element bytes are copied. Tensors whose
scales are not powers of two are requantized (lossy) and listed.

Per-tensor error metrics go to a small JSON file per shard under ``DST/.ue8m0-stats/`` so that
they survive worker processes and resumed runs; :mod:`ue8m0.checkpoint.requant_report` turns
them into the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ue8m0.checkpoint.fp8source import Fp8Weight, find_fp8_weights, load_scale
from ue8m0.checkpoint.layout import (
    MX_BLOCK,
    SCALE_DTYPES,
    check_out_format,
    module_of,
    quant_config,
    scale_name,
    ue8m0_codes,
)
from ue8m0.checkpoint.plan import Plan, ShardPlan, Task
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError
from ue8m0.policies import NonFinite, ScaleRule, ScaleSearch

STATS_DIR = ".ue8m0-stats"


@dataclass(frozen=True)
class Fp8Options:
    """Parameters of ``requantize`` (``to`` deepseek / compressed-tensors) and ``relayout``
    (``to`` mxfp8); all of them change the output bytes."""

    to: str = "deepseek"
    scale_rule: str = "rceil"
    scale_dtype: str = "auto"
    eps: float = 1e-4
    nonfinite: str = "raise"
    scale_search: str | None = None
    scales: str = "canonical"

    def validated(self) -> Fp8Options:
        rule = ScaleRule.parse(self.scale_rule)
        if not rule.is_power_of_two:
            raise CheckpointError("--scale-rule", "requantize needs a power-of-two rule")
        search = ScaleSearch.parse(self.scale_search)
        if self.scale_dtype != "auto" and self.scale_dtype not in SCALE_DTYPES:
            raise CheckpointError("--scale-dtype", f"unknown {self.scale_dtype!r}")
        if self.scales not in ("canonical", "repeat"):
            raise CheckpointError("--scales", f"unknown {self.scales!r}")
        block = MX_BLOCK if self.to == "mxfp8" else (128, 128)
        check_out_format(self.to, "e4m3", self.resolved_scale_dtype(None), block)
        if self.eps < 0 or not np.isfinite(self.eps):
            raise CheckpointError("--eps", f"must be finite and >= 0, got {self.eps}")
        return Fp8Options(
            self.to,
            rule.value,
            self.scale_dtype,
            float(self.eps),
            NonFinite.parse(self.nonfinite).value,
            None if search is ScaleSearch.NONE else search.value,
            self.scales,
        )

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_scale_dtype(self, source_tag: str | None) -> str:
        """``--scale-dtype`` for one tensor: ``auto`` keeps a DeepSeek-layout source's scale
        dtype when the output can store it (F32, U8, F8_E8M0), else the layout's default
        (f32; u8 for MXFP8)."""
        if self.scale_dtype != "auto":
            return self.scale_dtype
        if self.to == "mxfp8":
            return "u8"
        by_tag = {tag: name for name, tag in SCALE_DTYPES.items()}
        if self.to == "deepseek" and source_tag in by_tag:
            return by_tag[source_tag]
        return "f32"


def _scale_is_ue8m0(ckpt: Checkpoint, weight: Fp8Weight) -> tuple[int, int]:
    """(power-of-two blocks, blocks) of ``weight``'s scale."""
    mask, _ = ue8m0_codes(load_scale(ckpt.root, weight))
    return int(np.count_nonzero(mask)), int(mask.size)


def _grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    return (*shape[:-2], -(-shape[-2] // block[0]), -(-shape[-1] // block[1]))


def _fp8_task(ckpt: Checkpoint, w: Fp8Weight, kind: str, opts: Fp8Options) -> Task:
    info = ckpt.tensors[w.name]
    pow2, blocks = _scale_is_ue8m0(ckpt, w)
    all_pow2 = pow2 == blocks
    if kind == "requantize":
        action = "requantize"
        out_block = w.block
        reason = f"{pow2}/{blocks} blocks already power-of-two (copied)"
        if w.fmt != "e4m3" and opts.to == "compressed-tensors":
            raise CheckpointError(
                ckpt.path(ckpt.weight_map[w.name]), "compressed-tensors output is e4m3 only", w.name
            )
    else:
        out_block = MX_BLOCK
        if all_pow2 and w.block[1] % MX_BLOCK[1] == 0:
            action = "relayout"
            reason = "lossless: " + (
                "scale bytes repeated" if opts.scales == "repeat" else "canonical 1x32 rceil scales"
            )
        else:
            action = "requantize"
            why = (
                "scales not powers of two" if not all_pow2 else f"block {w.block} straddles groups"
            )
            reason = f"{why}: dequantized and requantized (lossy)"
    scale_tag = SCALE_DTYPES[opts.resolved_scale_dtype(w.scale_dtype)]
    outs = (
        OutSpec(w.name, info.dtype, info.shape),
        OutSpec(scale_name(w.name, opts.to), scale_tag, _grid(info.shape, out_block)),
    )
    return Task(w.name, action, reason, outs, w.scale, w.scale_shard, w.block, w.fmt)


def plan_fp8(ckpt: Checkpoint, kind: str, opts: Fp8Options) -> Plan:
    """Plan ``requantize`` or ``relayout``: every FP8 weight with its scale (any shard) -> the
    output layout; its old scale is dropped, everything else copied."""
    weights = find_fp8_weights(ckpt)
    if not weights:
        raise CheckpointError(ckpt.root, "no FP8 weights (ue8m0 quantize converts BF16/F32)")
    consumed = {w.scale: name for name, w in weights.items()}
    blocks = {w.block for w in weights.values()}
    fmts = sorted({w.fmt for w in weights.values()})
    shards, kept = [], []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            if info.name in weights:
                tasks.append(_fp8_task(ckpt, weights[info.name], kind, opts))
            elif info.name in consumed:
                tasks.append(Task(info.name, "drop", f"scale of {consumed[info.name]}"))
            else:
                if info.name.endswith(".weight") and len(info.shape) >= 2:
                    kept.append(module_of(info.name))
                out = (OutSpec(info.name, info.dtype, info.shape),)
                tasks.append(Task(info.name, "copy", "not FP8", out))
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    if opts.to != "mxfp8" and len(blocks) > 1:
        raise CheckpointError(
            ckpt.root, f"FP8 weights with different blocks {sorted(blocks)}: one config cannot say"
        )
    config = None
    if ckpt.config is not None:
        config = dict(ckpt.config)
        config["quantization_config"] = quant_config(
            opts.to, fmts[0], next(iter(blocks)), True, sorted(set(kept))
        )
    plan = Plan(kind, shards, config, {"command": kind, **opts.params()})
    lossy = [t.name for t in plan.tasks if kind == "relayout" and t.action == "requantize"]
    if lossy:
        plan.notes.append(f"{len(lossy)} tensors requantized (lossy): {', '.join(lossy)}")
    return plan
