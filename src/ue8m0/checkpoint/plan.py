"""What a conversion does to each tensor, and what each output shard will hold.

A plan is computed from the headers alone, before any data is read: it is what ``--dry-run``
prints, what the workers execute and what the manifest's parameters describe.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ue8m0.blocks import parse_block
from ue8m0.checkpoint.fp8source import find_fp8_weights
from ue8m0.checkpoint.layout import (
    FMTS,
    SCALE_DTYPES,
    check_out_format,
    default_keep_reason,
    module_of,
    quant_config,
    scale_name,
)
from ue8m0.checkpoint.safetensors import DTYPES, FLOAT_TAGS, FP8_TAGS, TensorInfo
from ue8m0.checkpoint.source import Checkpoint
from ue8m0.checkpoint.writer import OutSpec
from ue8m0.errors import CheckpointError
from ue8m0.policies import NonFinite, ScaleRule, ScaleSearch


@dataclass(frozen=True)
class QuantizeOptions:
    """Parameters of ``ue8m0 quantize`` (all of them change the output bytes)."""

    fmt: str = "e4m3"
    block: tuple[int, int] = (128, 128)
    scale_rule: str = "rceil"
    scale_dtype: str = "f32"
    eps: float = 1e-4
    nonfinite: str = "raise"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pad_partial: bool = False
    format: str = "deepseek"
    scale_search: str | None = None

    def validated(self) -> QuantizeOptions:
        if self.fmt not in FMTS:
            raise CheckpointError("--fmt", f"unknown format {self.fmt!r}; known: {list(FMTS)}")
        block = parse_block(self.block)
        if block[0] < 1 or block[1] < 1:
            raise CheckpointError("--block", "checkpoint blocks need explicit sizes, not -1")
        rule = ScaleRule.parse(self.scale_rule).value
        check_out_format(self.format, self.fmt, self.scale_dtype, block)
        search = ScaleSearch.parse(self.scale_search)
        if search is not ScaleSearch.NONE and rule == "fp32":
            raise CheckpointError("--scale-search", "mse needs a power-of-two --scale-rule")
        nonfinite = NonFinite.parse(self.nonfinite).value
        if self.scale_dtype not in SCALE_DTYPES:
            raise CheckpointError("--scale-dtype", f"unknown {self.scale_dtype!r}")
        if self.scale_dtype != "f32" and rule == "fp32":
            raise CheckpointError("--scale-dtype", "e8m0/u8 scales need a power-of-two rule")
        if self.format == "mxfp8" and rule == "fp32":
            raise CheckpointError("--scale-rule", "MXFP8 scales are powers of two: not fp32")
        for regex in (*self.include, *self.exclude):
            try:
                re.compile(regex)
            except re.error as exc:
                raise CheckpointError(
                    "--include/--exclude", f"bad regex {regex!r}: {exc}"
                ) from None
        return QuantizeOptions(
            self.fmt,
            block,
            rule,
            self.scale_dtype,
            float(self.eps),
            nonfinite,
            tuple(self.include),
            tuple(self.exclude),
            self.pad_partial,
            self.format,
            None if search is ScaleSearch.NONE else search.value,
        )

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        out["block"] = list(self.block)
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return out


@dataclass(frozen=True)
class Task:
    """One source tensor: ``quantize``, ``dequantize``, ``copy`` or ``drop`` (a consumed scale)."""

    name: str
    action: str
    reason: str
    outputs: tuple[OutSpec, ...] = ()
    scale: str | None = None
    scale_shard: str | None = None
    block: tuple[int, int] | None = None
    fmt: str | None = None


@dataclass
class ShardPlan:
    """One output shard: same name as its source shard."""

    name: str
    tasks: list[Task]
    in_bytes: int

    @property
    def specs(self) -> list[OutSpec]:
        """Output tensors in file order: wider dtypes first (aligned), source order within."""
        outs = [o for t in self.tasks for o in t.outputs]
        return sorted(outs, key=lambda o: -DTYPES[o.dtype].itemsize)

    @property
    def out_bytes(self) -> int:
        return sum(o.nbytes for t in self.tasks for o in t.outputs)


@dataclass
class Plan:
    kind: str
    shards: list[ShardPlan]
    config: dict[str, Any] | None
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[Task]:
        return [t for s in self.shards for t in s.tasks]

    @property
    def in_bytes(self) -> int:
        return sum(s.in_bytes for s in self.shards)

    @property
    def out_bytes(self) -> int:
        return sum(s.out_bytes for s in self.shards)

    def weight_map(self) -> dict[str, str]:
        return {o.name: s.name for s in self.shards for t in s.tasks for o in t.outputs}

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.tasks:
            counts[t.action] = counts.get(t.action, 0) + 1
        return {
            "kind": self.kind,
            "shards": len(self.shards),
            "tensors": counts,
            "bytes_in": self.in_bytes,
            "bytes_out": self.out_bytes,
            "params": self.params,
        }


def _quantize_decision(info: TensorInfo, opts: QuantizeOptions) -> str | None:
    """None when ``info`` is converted, else the reason it is kept."""
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
        reason = default_keep_reason(name)
        if reason is not None:
            return reason
    if 0 in info.shape:
        return "empty"
    br, bc = opts.block
    if not opts.pad_partial and (info.shape[-2] % br or info.shape[-1] % bc):
        return f"dims {info.shape[-2:]} not multiples of the block (use --pad-partial)"
    return None


def plan_quantize(ckpt: Checkpoint, opts: QuantizeOptions) -> Plan:
    """Plan ``ue8m0 quantize``: which tensors become FP8 + scale, which are copied."""
    fp8 = [t.name for t in ckpt.tensors.values() if t.dtype in FP8_TAGS]
    if fp8:
        raise CheckpointError(
            ckpt.path(ckpt.weight_map[fp8[0]]), "already FP8: dequantize it first", fp8[0]
        )
    el_tag = FMTS[opts.fmt][1]
    scale_tag = SCALE_DTYPES[opts.scale_dtype]
    shards, kept_modules = [], []
    for shard in ckpt.shards:
        tasks = []
        for info in ckpt.shard_tensors(shard):
            reason = _quantize_decision(info, opts)
            if reason is None:
                grid = (
                    *info.shape[:-2],
                    -(-info.shape[-2] // opts.block[0]),
                    -(-info.shape[-1] // opts.block[1]),
                )
                outs = (
                    OutSpec(info.name, el_tag, info.shape),
                    OutSpec(scale_name(info.name, opts.format), scale_tag, grid),
                )
                tasks.append(Task(info.name, "quantize", "", outs, block=opts.block, fmt=opts.fmt))
            else:
                if info.name.endswith(".weight") and len(info.shape) >= 2:
                    kept_modules.append(module_of(info.name))
                tasks.append(
                    Task(info.name, "copy", reason, (OutSpec(info.name, info.dtype, info.shape),))
                )
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None
    if ckpt.config is not None:
        config = dict(ckpt.config)
        config["quantization_config"] = quant_config(
            opts.format,
            opts.fmt,
            opts.block,
            opts.scale_rule != "fp32",
            sorted(set(kept_modules)),
        )
    plan = Plan("quantize", shards, config, {"command": "quantize", **opts.params()})
    if not any(t.action == "quantize" for t in plan.tasks):
        plan.notes.append("no tensor is converted (check --include/--exclude and the block)")
    return plan


def plan_dequantize(ckpt: Checkpoint, dtype: str = "bf16") -> Plan:
    """Plan ``ue8m0 dequantize``: every FP8 weight with its scale (any shard) -> ``dtype``."""
    out_tag = {"bf16": "BF16", "f32": "F32"}[dtype]
    consumed: dict[str, str] = {}
    found: dict[str, Task] = {}
    for w in find_fp8_weights(ckpt).values():
        info = ckpt.tensors[w.name]
        consumed[w.scale] = w.name
        found[w.name] = Task(
            w.name,
            "dequantize",
            f"{w.scale_dtype} scale {w.scale}",
            (OutSpec(w.name, out_tag, info.shape),),
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
                tasks.append(
                    Task(
                        info.name, "copy", "not FP8", (OutSpec(info.name, info.dtype, info.shape),)
                    )
                )
        shards.append(ShardPlan(shard, tasks, ckpt.shard_bytes(shard)))
    config = None
    if ckpt.config is not None:
        config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    return Plan("dequantize", shards, config, {"command": "dequantize", "dtype": dtype})
