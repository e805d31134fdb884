"""Planning ``requantize`` and ``relayout``: every FP8 weight with its scale (any shard, any
registered layout) to the output layout; its old scale is dropped, everything else copied.

``requantize`` dequantizes each block in float32 (``decode(codes) * scale``, never through bf16,
vLLM's path rather than SGLang's), quantizes it again with a power-of-two rule (and the optional
per-block MSE search); blocks whose scale already is a power of two are copied byte for byte, so
an already-UE8M0 checkpoint comes out identical. ``relayout --to mxfp8`` is lossless from
power-of-two sources whose block columns are whole 1x32 groups (each group's canonical ``rceil``
scale, or with ``--scales repeat`` the source byte repeated); other tensors are requantized
(lossy) and listed in the plan's notes.
"""

from __future__ import annotations

import numpy as np

from ue8m0.checkpoint.architectures import skip_modules
from ue8m0.checkpoint.options import Fp8Options
from ue8m0.checkpoint.pairs import Fp8Weight, find_fp8_weights, load_scale
from ue8m0.checkpoint.plan import Plan, ShardPlan, Task, copy_task
from ue8m0.checkpoint.scales import SCALE_DTYPES, scale_grid, ue8m0_codes
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError

#: the kinds of FP8 -> FP8 conversion this module plans
KINDS = ("requantize", "relayout")


def _pow2_blocks(ckpt: Checkpoint, weight: Fp8Weight) -> tuple[int, int]:
    """(power-of-two blocks, blocks) of ``weight``'s scale."""
    mask, _ = ue8m0_codes(load_scale(ckpt.root, weight))
    return int(np.count_nonzero(mask)), int(mask.size)


def _fp8_task(ckpt: Checkpoint, w: Fp8Weight, kind: str, opts: Fp8Options) -> Task:
    info = ckpt.tensors[w.name]
    layout = opts.out_layout
    pow2, blocks = _pow2_blocks(ckpt, w)
    out_block = opts.out_block(w.block)
    if w.fmt not in layout.fmts:
        raise CheckpointError(
            ckpt.path(ckpt.weight_map[w.name]),
            f"{layout.title} output is {'/'.join(layout.fmts)} only",
            w.name,
        )
    if kind == "requantize":
        action = "requantize"
        reason = f"{pow2}/{blocks} blocks already power-of-two (copied)"
    elif pow2 == blocks and w.block[1] % out_block[1] == 0:
        action = "relayout"
        reason = "lossless: " + (
            "scale bytes repeated" if opts.scales == "repeat" else "canonical 1x32 rceil scales"
        )
    else:
        action = "requantize"
        why = "scales not powers of two" if pow2 != blocks else f"block {w.block} straddles groups"
        reason = f"{why}: dequantized and requantized (lossy)"
    scale_tag = SCALE_DTYPES[opts.resolved_scale_dtype(w.scale_dtype)]
    outs = (
        OutSpec(w.name, info.dtype, info.shape),
        OutSpec(layout.scale_name(w.name), scale_tag, scale_grid(info.shape, out_block)),
    )
    return Task(w.name, action, reason, outs, w.scale, w.scale_shard, w.block, w.fmt)


def plan_fp8(ckpt: Checkpoint, kind: str, opts: Fp8Options) -> Plan:
    """Plan ``requantize`` or ``relayout`` with validated ``opts``."""
    if kind not in KINDS:
        raise ValueError(f"unknown FP8 conversion {kind!r}")
    weights = find_fp8_weights(ckpt)
    packed = next((w for w in weights.values() if w.packed), None)
    if packed is not None:
        raise CheckpointError(
            ckpt.path(ckpt.weight_map[packed.name]),
            f"packed FP4 weight: {kind} converts FP8 weights "
            "(relayout --to fp8 repacks FP4 experts first)",
            packed.name,
        )
    if not weights:
        raise CheckpointError(ckpt.root, "no FP8 weights (ue8m0 quantize converts BF16/F32)")
    layout = opts.out_layout
    consumed = {w.scale: name for name, w in weights.items()}
    blocks = {w.block for w in weights.values()}
    fmts = sorted({w.fmt for w in weights.values()})
    if not layout.fixed_block and len(blocks) > 1:
        raise CheckpointError(
            ckpt.root, f"FP8 weights with different blocks {sorted(blocks)}: one config cannot say"
        )
    shards = []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            if info.name in weights:
                tasks.append(_fp8_task(ckpt, weights[info.name], kind, opts))
            elif info.name in consumed:
                tasks.append(Task(info.name, "drop", f"scale of {consumed[info.name]}"))
            else:
                tasks.append(copy_task(info, "not FP8"))
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None
    if ckpt.config is not None:
        config = dict(ckpt.config)
        tensors = ((i.name, i.shape) for i in ckpt.tensors.values())
        config["quantization_config"] = layout.quant_config(
            fmts[0],
            opts.out_block(next(iter(blocks))),
            True,
            skip_modules(tensors, lambda n: n not in weights and n not in consumed),
        )
    plan = Plan(kind, shards, config, opts)
    lossy = [t.name for t in plan.tasks if kind == "relayout" and t.action == "requantize"]
    if lossy:
        plan.notes.append(f"{len(lossy)} tensors requantized (lossy): {', '.join(lossy)}")
    return plan
