"""Planning ``relayout --to fp8``: DeepSeek-V4's packed FP4 routed experts repacked to FP8 E4M3
with 128x128 F8_E8M0 scales (for Hopper and H20, which have FP8 but no FP4 tensor cores); every
other tensor copied byte for byte; ``expert_dtype: fp8`` written where V4 and V4.1 loaders look
for it (top level and inside ``quantization_config``; older vLLM defaults a missing one to fp4).
"""

from __future__ import annotations

from typing import Any

from ue8m0.checkpoint.options import Fp4RepackOptions
from ue8m0.checkpoint.pairs import find_fp8_weights
from ue8m0.checkpoint.plan import Plan, ShardPlan, Task, copy_task
from ue8m0.checkpoint.registry import DEFAULT_BLOCK
from ue8m0.checkpoint.scales import config_block, scale_grid
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError


def _repacked_config(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["expert_dtype"] = "fp8"
    qc = out.get("quantization_config")
    if isinstance(qc, dict):
        out["quantization_config"] = {**qc, "expert_dtype": "fp8"}
    text = out.get("text_config")
    if isinstance(text, dict) and "expert_dtype" in text:
        out["text_config"] = {**text, "expert_dtype": "fp8"}
    return out


def plan_fp4_repack(ckpt: Checkpoint, opts: Fp4RepackOptions) -> Plan:
    """Plan ``relayout --to fp8`` with validated ``opts``. Refused (one line) for a checkpoint
    that declares another ``weight_block_size`` than 128x128: DeepSeek-V4.1 declares ``[32,
    32]`` and its ``inference/model.py`` reads every FP8 weight in 32x32 blocks, so 128x128 FP8
    experts would not load, and the tile of V4.1's own FP4 -> FP8 cast is not confirmed."""
    weights = {n: w for n, w in find_fp8_weights(ckpt).items() if w.packed}
    if not weights:
        raise CheckpointError(ckpt.root, "no packed FP4 weights (expert_dtype fp4) to repack")
    declared = config_block(ckpt.config)
    if declared not in (None, DEFAULT_BLOCK):
        raise CheckpointError(
            ckpt.root / "config.json",
            f"relayout --to fp8 writes DeepSeek-V4's 128x128 FP8 experts, but config.json "
            f"declares weight_block_size {list(declared)} (DeepSeek-V4.1: its loaders read every "
            "FP8 weight in those blocks); not supported",
        )
    consumed = {w.scale: name for name, w in weights.items()}
    shards = []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            w = weights.get(info.name)
            if w is not None:
                shape = w.logical_shape(info.shape)
                outs = (
                    OutSpec(w.name, "F8_E4M3", shape),
                    OutSpec(w.scale, "F8_E8M0", scale_grid(shape, DEFAULT_BLOCK)),
                )
                why = "FP4 -> FP8 as DeepSeek's cast_e2m1fn_to_e4m3fn"
                tasks.append(
                    Task(w.name, "cast_fp4", why, outs, w.scale, w.scale_shard, w.block, w.fmt)
                )
            elif info.name in consumed:
                tasks.append(Task(info.name, "drop", f"scale of {consumed[info.name]} (rewritten)"))
            else:
                tasks.append(copy_task(info, "not FP4"))
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None if ckpt.config is None else _repacked_config(ckpt.config)
    return Plan("relayout", shards, config, opts)
