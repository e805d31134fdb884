"""Planning ``ue8m0 dequantize``: every FP8 weight with its scale (any shard, any registered
layout) back to BF16 or F32; its scale is dropped, everything else copied."""

from __future__ import annotations

from ue8m0.checkpoint.options import DEQUANT_DTYPES, DequantizeOptions
from ue8m0.checkpoint.pairs import Fp8Weight, pair_fp8_weights
from ue8m0.checkpoint.plan import Plan, ShardPlan, Task, copy_task
from ue8m0.checkpoint.registry import DEEPSEEK_V4, without_quantization
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError


def undeclared_block(w: Fp8Weight, declared: tuple[int, int] | None) -> bool:
    """Whether ``w``'s scale grid fits its weight only with a block the checkpoint does not
    declare (``weight_block_size``): such a weight would be read with a block nobody wrote down,
    and a grid that divides evenly is read with a wrong one silently. Two kinds keep their own
    block: packed FP4 experts (one scale per 32 inputs) and, in the DeepSeek-V4 layout, one
    scale per row per ``declared[1]`` inputs -- DeepSeek-V4.1's Engram tables
    (``layers.L.engram.embed.weight`` F8_E4M3 ``[rows, 256]`` with ``.scale`` F8_E8M0 ``[rows,
    8]`` under ``weight_block_size [32, 32]``; sources in docs/deepseek-v4.md)."""
    if declared is None or w.block == declared or w.packed:
        return False
    return not (w.block == (1, declared[1]) and DEEPSEEK_V4.is_scale_name(w.scale))


def _fp8_weights(ckpt: Checkpoint) -> list[Fp8Weight]:
    """Every FP8 weight with its scale; refused (one line): a weight without a usable scale, a
    checkpoint without FP8 weights (nothing to dequantize: as ``requantize`` refuses it), and a
    scale grid that fits the weight only with another block than the configured
    ``weight_block_size`` (:func:`undeclared_block`)."""
    pairs = pair_fp8_weights(ckpt)
    if pairs.problems:
        raise pairs.problems[0].error(ckpt)
    if not pairs.weights:
        raise CheckpointError(
            ckpt.root, "no FP8 weights: nothing to dequantize (the checkpoint is high precision)"
        )
    for w in pairs.weights.values():
        if pairs.declared is not None and undeclared_block(w, pairs.declared):
            info, scale = ckpt.tensors[w.name], ckpt.tensors[w.scale]
            raise CheckpointError(
                ckpt.path(ckpt.weight_map[w.name]),
                f"scale {w.scale} of shape {list(scale.shape)} does not fit {list(info.shape)} "
                f"with the configured weight_block_size {list(pairs.declared)}",
                w.name,
            )
    return list(pairs.weights.values())


def plan_dequantize(ckpt: Checkpoint, opts: DequantizeOptions | None = None) -> Plan:
    """Plan ``ue8m0 dequantize`` (default: BF16)."""
    opts = (opts or DequantizeOptions()).validated()
    out_tag = DEQUANT_DTYPES[opts.dtype]
    consumed: dict[str, str] = {}
    found: dict[str, Task] = {}
    for w in _fp8_weights(ckpt):
        info = ckpt.tensors[w.name]
        consumed[w.scale] = w.name
        found[w.name] = Task(
            w.name,
            "dequantize",
            f"{w.scale_dtype} scale {w.scale}",
            (OutSpec(w.name, out_tag, w.logical_shape(info.shape)),),
            w.scale,
            w.scale_shard,
            w.block,
            w.fmt,
        )
    shards = []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            if info.name in found:
                tasks.append(found[info.name])
            elif info.name in consumed:
                tasks.append(Task(info.name, "drop", f"scale of {consumed[info.name]}"))
            else:
                tasks.append(copy_task(info, "not FP8"))
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None
    if ckpt.config is not None:
        config = without_quantization(ckpt.config)
    return Plan("dequantize", shards, config, opts)
