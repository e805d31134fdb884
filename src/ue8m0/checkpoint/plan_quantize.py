"""Planning ``ue8m0 quantize``: which tensors become FP8 + scale in the output layout, which
are copied, and the ``quantization_config`` the layout writes."""

from __future__ import annotations

import re
from typing import Any

from ue8m0.checkpoint.architectures import (
    EXPERT,
    Architecture,
    FusedGroup,
    architecture_of,
    experts_module_of,
    group_of,
    skip_modules,
)
from ue8m0.checkpoint.options import QuantizeOptions
from ue8m0.checkpoint.plan import Plan, ShardPlan, Task, copy_task
from ue8m0.checkpoint.registry import FMTS, FP4, MX_BLOCK, module_of
from ue8m0.checkpoint.safetensors import FLOAT_TAGS, FP8_TAGS, TensorInfo
from ue8m0.checkpoint.scales import SCALE_DTYPES, scale_grid
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError
from ue8m0.policies import ScaleRule
from ue8m0.printable import printable


def _fp4_outputs(info: TensorInfo, layout_scale: str) -> tuple[OutSpec, ...]:
    """A routed expert stored as packed FP4: I8 ``[..., out, in/2]`` and F8_E8M0 scales
    ``[..., out, in/32]`` (DeepSeek-V4's release layout)."""
    *lead, out, n_in = info.shape
    return (
        OutSpec(info.name, "I8", (*lead, out, n_in // 2)),
        OutSpec(layout_scale, "F8_E8M0", (*lead, out, n_in // MX_BLOCK[1])),
    )


#: why a weight whose dims are not multiples of the block is kept
PARTIAL = "not multiples of the block (use --pad-partial)"


def _quantize_decision(info: TensorInfo, opts: QuantizeOptions) -> str | None:
    """None when ``info`` is converted, else the reason it is kept (before fused groups)."""
    name = info.name
    if opts.exclude and any(re.search(r, name) for r in opts.exclude):
        return "--exclude"
    if opts.include and not any(re.search(r, name) for r in opts.include):
        return "not matched by --include"
    if info.dtype not in FLOAT_TAGS:
        return f"dtype {info.dtype}"
    if not name.endswith(".weight"):
        return "not a weight"
    if len(info.shape) not in (2, 3):
        return f"{len(info.shape)}-D"
    if not opts.include:
        reason = opts.out_layout.keep_reason(name)
        if reason is not None:
            return reason
    if 0 in info.shape:
        return "empty"
    if _as_fp4(info, opts):
        return None if info.shape[-1] % MX_BLOCK[1] == 0 else "inputs not a multiple of 32 (FP4)"
    assert opts.block is not None
    br, bc = opts.block
    if not opts.pad_partial and (info.shape[-2] % br or info.shape[-1] % bc):
        return f"dims {info.shape[-2:]} {PARTIAL}"
    return None


def _partial_rows_only(info: TensorInfo, opts: QuantizeOptions) -> bool:
    assert opts.block is not None
    return info.shape[-1] % opts.block[1] == 0 and info.shape[-2] % opts.block[0] != 0


def _fused_decisions(
    infos: list[TensorInfo],
    decisions: dict[str, str | None],
    opts: QuantizeOptions,
    arch: Architecture,
) -> None:
    """Fused groups decide together (:mod:`.architectures`): a partial last member (rows only,
    not an MoE expert) is converted; then if any member is kept, every member is."""
    groups: dict[tuple[str, FusedGroup], list[TensorInfo]] = {}
    for info in infos:
        found = group_of(arch, module_of(info.name)) if info.name.endswith(".weight") else None
        if found is not None:
            groups.setdefault(found, []).append(info)
    for (_, group), members in groups.items():
        for info in members:
            reason = decisions[info.name]
            last = module_of(info.name).rpartition(".")[2] == group.last
            if (
                reason is not None
                and reason.endswith(PARTIAL)
                and last
                and len(members) > 1
                and _partial_rows_only(info, opts)
                and not EXPERT.search(info.name)
            ):
                decisions[info.name] = None  # a partial grid where the loaders read one
        kept = [m for m in members if decisions[m.name] is not None]
        if kept and len(kept) < len(members):
            first = kept[0]
            why = f"fused with {module_of(first.name)} (kept: {decisions[first.name]})"
            for m in members:
                if decisions[m.name] is None:
                    decisions[m.name] = why


def _expert_layer_decisions(infos: list[TensorInfo], decisions: dict[str, str | None]) -> None:
    """All the expert weights of one MoE layer decide together (transformers v5 loads them as one
    module with one scale tensor: a mix is refused or misread, :mod:`.architectures`): if any is
    kept, every one is."""
    layers: dict[str, list[str]] = {}
    for info in infos:
        layer = experts_module_of(info.name, info.shape)
        if layer is not None:
            layers.setdefault(layer, []).append(info.name)
    for layer, names in layers.items():
        kept = [n for n in names if decisions[n] is not None]
        if not kept:
            continue
        why = f"an expert of {layer} is kept ({module_of(kept[0])}: {decisions[kept[0]]})"
        for name in names:
            if decisions[name] is None:
                decisions[name] = why


def _as_fp4(info: TensorInfo, opts: QuantizeOptions) -> bool:
    return opts.experts == "fp4" and opts.out_layout.is_fp4_expert(info.name)


def _existing_quantization(ckpt: Checkpoint) -> str | None:
    """The ``quant_method`` (or ``?``) of a ``quantization_config`` the source already declares,
    at the top level or in a nested ``text_config``; None when it declares none."""
    for level in (ckpt.config, (ckpt.config or {}).get("text_config")):
        if isinstance(level, dict) and level.get("quantization_config") is not None:
            qc = level["quantization_config"]
            method = qc.get("quant_method") if isinstance(qc, dict) else None
            return str(method) if method is not None else "?"
    return None


#: model types whose release layout differs from the FP4-expert layout ``quantize`` writes
#: (DeepSeek-V4.1: 32x32 blocks and Engram row-group scales; docs/deepseek-v4.md)
WRITES_NOT = frozenset({"deepseek_v41", "deepseek_v41_text"})


def _model_types(config: dict[str, Any] | None) -> set[str]:
    """``model_type`` at the top level and in a nested ``text_config``."""
    levels = [config or {}, (config or {}).get("text_config")]
    return {str(lv["model_type"]) for lv in levels if isinstance(lv, dict) and "model_type" in lv}


def plan_quantize(
    ckpt: Checkpoint,
    opts: QuantizeOptions,
    *,
    allow_empty: bool = True,
    replace_quantization: bool = False,
) -> Plan:
    """Plan ``ue8m0 quantize`` with validated ``opts``.

    Refused (one line each): a source with FP8 tensors; a source whose ``config.json`` already
    declares a ``quantization_config`` (bitsandbytes, GPTQ, ...: its tensors are not what that
    config describes once converted) unless ``replace_quantization``; a plan that converts no
    tensor (the output would be a copy declaring FP8) unless ``allow_empty`` (the default, for
    a plan that is only shown: it gets a note; the CLI refuses a run that converts nothing).
    """
    fp8 = [t.name for t in ckpt.tensors.values() if t.dtype in FP8_TAGS]
    if fp8:
        raise CheckpointError(
            ckpt.path(ckpt.weight_map[fp8[0]]), "already FP8: dequantize it first", fp8[0]
        )
    method = _existing_quantization(ckpt)
    if method is not None and not replace_quantization:
        raise CheckpointError(
            ckpt.root / "config.json",
            f"already has a quantization_config (quant_method {printable(method)}): quantize "
            "would read its tensors as high precision and replace it "
            "(--replace-quantization-config does)",
        )
    layout = opts.out_layout
    if layout.fp4_experts is not None and _model_types(ckpt.config) & WRITES_NOT:
        raise CheckpointError(
            ckpt.root / "config.json",
            f"{'/'.join(sorted(_model_types(ckpt.config) & WRITES_NOT))}: its release layout "
            "(32x32 blocks, Engram tables with 1x32 row-group scales) is read, not written, by "
            f"ue8m0; --format {layout.name} writes DeepSeek-V4's 128x128 layout, which its "
            "loaders misread",
        )
    assert opts.block is not None and opts.scale_dtype is not None, "validated options"
    el_tag = FMTS[opts.fmt][1]
    scale_tag = SCALE_DTYPES[opts.scale_dtype]
    decisions = {info.name: _quantize_decision(info, opts) for info in ckpt.tensors.values()}
    infos = list(ckpt.tensors.values())
    _fused_decisions(infos, decisions, opts, architecture_of(ckpt.config))
    _expert_layer_decisions(infos, decisions)
    shards = []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            reason = decisions[info.name]
            if reason is None and _as_fp4(info, opts):
                outs = _fp4_outputs(info, layout.scale_name(info.name))
                why = "routed expert: DeepSeek-V4's FP4 rule"
                tasks.append(Task(info.name, "quantize_fp4", why, outs, block=MX_BLOCK, fmt=FP4))
            elif reason is None:
                outs = (
                    OutSpec(info.name, el_tag, info.shape),
                    OutSpec(
                        layout.scale_name(info.name),
                        scale_tag,
                        scale_grid(info.shape, opts.block),
                    ),
                )
                tasks.append(Task(info.name, "quantize", "", outs, block=opts.block, fmt=opts.fmt))
            else:
                tasks.append(copy_task(info, reason))
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None
    if ckpt.config is not None:
        config = dict(ckpt.config)
        config["quantization_config"] = layout.quant_config(
            opts.fmt,
            opts.block,
            ScaleRule(opts.scale_rule).is_power_of_two,
            skip_modules(((i.name, i.shape) for i in infos), lambda n: decisions[n] is not None),
        )
        if opts.experts is not None:  # written where every V4 loader looks for it
            config["expert_dtype"] = opts.experts
            config["quantization_config"]["expert_dtype"] = opts.experts
    plan = Plan("quantize", shards, config, opts)
    if all(t.action == "copy" for t in plan.tasks):
        if not allow_empty:
            raise CheckpointError(ckpt.root, _nothing_converted(plan))
        plan.notes.append("no tensor is converted (check --include/--exclude and the block)")
    return plan


def _nothing_converted(plan: Plan) -> str:
    """Why a plan converts nothing, naming the first weight kept and its reason."""
    weights = [t for t in plan.tasks if t.name.endswith(".weight") and t.action == "copy"]
    first = weights[0] if weights else (plan.tasks[0] if plan.tasks else None)
    example = f" ({printable(first.name)}: {first.reason})" if first is not None else ""
    return (
        f"nothing to convert: every tensor would be kept in high precision{example}; check "
        "--include/--exclude and --block (--allow-empty writes the copy anyway)"
    )
