"""Roofline estimates per model × chip × format × workload (formulas in ``docs/plan.md``).

Each phase (prefill of one prompt, one decode step of a batch) is split into op classes; each
class takes ``max(FLOPs / peak, bytes / bandwidth)`` on the whole system (``num_chips`` chips,
weights and KV cache perfectly partitioned) and the classes add up. Every figure is an upper
bound on throughput (a lower bound on time): peak FLOPs, peak bandwidth, no communication,
kernel launch or scheduling overheads. The scale-up time a tensor-parallel layout would need
(two ring all-reduces of the BF16 hidden state per layer) is reported beside it, and flagged
when it would exceed the phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ue8m0.plan.chips import Chip
from ue8m0.plan.errors import PlanError
from ue8m0.plan.models import ModelSpec, Role
from ue8m0.plan.precision import STORED, Compute, ComputePath, WeightFormat, compute_path

UPPER_BOUND = (
    "Upper bounds: peak dense FLOPs and peak memory bandwidth, weights and KV cache perfectly "
    "partitioned over the chips, uniform expert routing, no communication, kernel or "
    "scheduling overheads. Measured systems reach a fraction of these "
    "(see `ue8m0 plan --calibrate`)."
)

#: roles whose weights a decode step reads in full (routed experts are counted separately;
#: embedding, lookup tables and a vision tower are held in memory, a few rows read per token)
_DENSE_ROLES = (Role.ATTENTION, Role.FFN, Role.SHARED, Role.HEAD, Role.ROUTER, Role.NORM)

#: the tensor classes weight bytes are reported by (``bytes_by_class``)
CLASSES: dict[str, tuple[Role, ...]] = {
    "attention": (Role.ATTENTION,),
    "dense_ffn": (Role.FFN,),
    "shared_experts": (Role.SHARED,),
    "routed_experts": (Role.EXPERT,),
    "embeddings_head": (Role.EMBEDDING, Role.HEAD),
    "lookup_tables": (Role.LOOKUP,),
    "vision": (Role.VISION,),
    "other": (Role.ROUTER, Role.NORM),
}


@dataclass(frozen=True)
class Workload:
    """What is asked: ``batch`` sequences decoding at ``context`` tokens each, on ``num_chips``
    chips (None: the fewest that fit), keeping ``reserve`` of each chip's memory free
    (activations, runtime, fragmentation), with the KV cache in ``kv_format``."""

    batch: int = 1
    context: int = 8192
    num_chips: int | None = None
    reserve: float = 0.10
    kv_format: str = "bf16"

    def __post_init__(self) -> None:
        if self.batch < 1 or self.context < 1:
            raise PlanError("batch and context must be at least 1")
        if self.num_chips is not None and self.num_chips < 1:
            raise PlanError("num_chips must be at least 1")
        if not 0 <= self.reserve < 1:
            raise PlanError("reserve must be in [0, 1)")


@dataclass(frozen=True)
class OpCost:
    """One op class of a phase on the whole system; ``peak``/``bandwidth`` in FLOP/s and B/s."""

    name: str
    flops: float
    bytes: float
    peak: float | None
    bandwidth: float

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte."""
        return self.flops / self.bytes if self.bytes else math.inf

    @property
    def compute_s(self) -> float | None:
        """``flops / peak`` (None when the peak is not published)."""
        return None if self.peak is None else self.flops / self.peak

    @property
    def memory_s(self) -> float:
        """``bytes / bandwidth``."""
        return self.bytes / self.bandwidth

    @property
    def time_s(self) -> float:
        """The roofline time ``max(compute_s, memory_s)`` (memory only when the peak is unknown)."""
        return max(self.compute_s or 0.0, self.memory_s)

    @property
    def bound(self) -> str:
        """``compute`` or ``memory``."""
        return "compute" if (self.compute_s or 0.0) > self.memory_s else "memory"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "op": self.name,
            "flops": self.flops,
            "bytes": self.bytes,
            "intensity_flop_per_byte": self.intensity,
            "time_s": self.time_s,
            "bound": self.bound,
        }


@dataclass(frozen=True)
class Phase:
    """Prefill of one prompt or one decode step: op classes, and the tensor-parallel all-reduce
    time beside them (``comm_s``, not part of :attr:`time_s`; None for one chip or an unknown
    link)."""

    tokens: int
    ops: tuple[OpCost, ...]
    comm_s: float | None

    @property
    def time_s(self) -> float:
        """``Σ op time`` (op classes run one after another; communication excluded)."""
        return sum(op.time_s for op in self.ops)

    @property
    def comm_bound(self) -> bool:
        """Whether tensor-parallel all-reduces would take longer than the op classes."""
        return self.comm_s is not None and self.comm_s > self.time_s

    @property
    def bottleneck(self) -> str:
        """The op class that takes longest and its bound, e.g. ``experts:memory``."""
        slowest = max(self.ops, key=lambda op: op.time_s)
        return f"{slowest.name}:{slowest.bound}"


@dataclass(frozen=True)
class Estimate:
    """Everything the planner says about one model × chip × format × workload."""

    model: ModelSpec
    chip: Chip
    fmt: WeightFormat
    path: ComputePath
    expert_path: ComputePath
    workload: Workload
    num_chips: int | None
    weight_bytes: int
    kv_bytes: float
    usable_bytes_per_chip: float | None
    min_chips: int | None
    prefill: Phase | None
    decode: Phase | None
    notes: tuple[str, ...]

    @property
    def fits(self) -> bool | None:
        """Whether weights + KV fit in ``num_chips`` chips minus the reserve (None: unknown)."""
        if self.min_chips is None or self.num_chips is None:
            return None
        return self.num_chips >= self.min_chips

    @property
    def memory_per_chip(self) -> float | None:
        """Bytes of weights and KV cache per chip (perfect partition over ``num_chips``)."""
        if self.num_chips is None:
            return None
        return (self.weight_bytes + self.kv_bytes) / self.num_chips

    @property
    def prefill_s(self) -> float | None:
        """Seconds to prefill one prompt of ``context`` tokens on the system."""
        return None if self.prefill is None else self.prefill.time_s

    @property
    def prefill_tok_s_per_chip(self) -> float | None:
        """Prefill tokens per second per chip."""
        if self.prefill is None or self.num_chips is None:
            return None
        return self.prefill.tokens / self.prefill.time_s / self.num_chips

    @property
    def decode_tok_s(self) -> float | None:
        """Decode tokens per second of the whole system (``batch`` per step)."""
        return None if self.decode is None else self.workload.batch / self.decode.time_s

    @property
    def decode_tok_s_per_chip(self) -> float | None:
        """Decode tokens per second per chip."""
        if self.decode_tok_s is None or self.num_chips is None:
            return None
        return self.decode_tok_s / self.num_chips

    @property
    def decode_tok_s_per_seq(self) -> float | None:
        """Decode tokens per second each sequence sees (``1 / step time``)."""
        return None if self.decode is None else 1.0 / self.decode.time_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (bytes in bytes, times in seconds)."""
        return {
            "chip": self.chip.key,
            "chip_name": self.chip.name,
            "format": self.fmt.name,
            "compute": self.path.label,
            "expert_compute": self.expert_path.label,
            "peak_tflops": self.path.peak_tflops,
            "capability_class": self.chip.capability_class,
            "batch": self.workload.batch,
            "context": self.workload.context,
            "num_chips": self.num_chips,
            "min_chips": self.min_chips,
            "fits": self.fits,
            "weight_bytes": self.weight_bytes,
            "kv_bytes": self.kv_bytes,
            "memory_per_chip": self.memory_per_chip,
            "usable_bytes_per_chip": self.usable_bytes_per_chip,
            "prefill_s": self.prefill_s,
            "prefill_tok_s_per_chip": self.prefill_tok_s_per_chip,
            "decode_tok_s": self.decode_tok_s,
            "decode_tok_s_per_chip": self.decode_tok_s_per_chip,
            "decode_tok_s_per_seq": self.decode_tok_s_per_seq,
            "decode_bottleneck": None if self.decode is None else self.decode.bottleneck,
            "prefill_tp_comm_s": None if self.prefill is None else self.prefill.comm_s,
            "decode_tp_comm_s": None if self.decode is None else self.decode.comm_s,
            "prefill_ops": None
            if self.prefill is None
            else [o.to_dict() for o in self.prefill.ops],
            "decode_ops": None if self.decode is None else [o.to_dict() for o in self.decode.ops],
            "notes": list(self.notes),
            "upper_bound": True,
        }


def weight_bytes(model: ModelSpec, fmt: WeightFormat, *roles: Role) -> int:
    """Bytes of the main model's weights in ``fmt``: quantizable roles in ``fmt`` (routed experts
    in ``fmt.experts`` where set), the rest in BF16, a tensor with ``stored`` in that format."""
    total = 0
    for w in model.weights:
        if roles and w.role not in roles:
            continue
        if w.stored:
            f = STORED[w.stored]
        elif w.role.quantizable:
            f = fmt.for_experts(w.role is Role.EXPERT)
        else:
            f = STORED["bf16"]
        total += f.weight_bytes(w.rows, w.cols) * w.count
    return total


def bytes_by_class(model: ModelSpec, fmt: WeightFormat) -> dict[str, int]:
    """Weight bytes in ``fmt`` per tensor class (:data:`CLASSES`); they add up to the total."""
    return {name: weight_bytes(model, fmt, *roles) for name, roles in CLASSES.items()}


def _phase(
    model: ModelSpec,
    chip: Chip,
    fmt: WeightFormat,
    paths: tuple[ComputePath, ComputePath],
    n: int,
    tokens: int,
    attn_flops: float,
    kv_bytes: float,
    kv_format: str,
) -> Phase:
    """One phase with ``tokens`` tokens through the weights on ``n`` chips."""
    bw = n * (chip.number("mem_bw_tbs") or math.nan) * 1e12
    gemm_peak, expert_peak = (
        None if p.peak_tflops is None else n * p.peak_tflops * 1e12 for p in paths
    )
    attn_compute = Compute.FP8 if kv_format == "fp8" and chip.fp8.native else Compute.BF16
    attn_tflops = chip.number(attn_compute.value)
    attn_peak = None if attn_tflops is None else n * attn_tflops * 1e12
    dense_params = model.params(Role.ATTENTION, Role.FFN, Role.SHARED, Role.HEAD, Role.ROUTER)
    ops = [
        OpCost(
            "dense",
            2.0 * dense_params * tokens,
            weight_bytes(model, fmt, *_DENSE_ROLES),
            gemm_peak,
            bw,
        )
    ]
    if model.is_moe:
        touched = model.experts_touched(tokens) / model.experts
        ops.append(
            OpCost(
                "experts",
                2.0 * tokens * model.expert_params * model.experts_per_token / model.experts,
                touched * weight_bytes(model, fmt, Role.EXPERT),
                expert_peak,
                bw,
            )
        )
    ops.append(OpCost("attention", attn_flops, kv_bytes, attn_peak, bw))
    comm_s = None
    link = chip.number("scaleup_gbs")
    if n > 1 and link is not None:
        traffic = model.layers * 2 * 2 * (n - 1) / n * tokens * model.hidden * 2
        comm_s = traffic / (link / 2 * 1e9)
    return Phase(tokens, tuple(ops), comm_s)


def estimate(model: ModelSpec, chip: Chip, fmt: WeightFormat, workload: Workload) -> Estimate:
    """The roofline estimate of ``model`` on ``chip`` in ``fmt`` for ``workload``."""
    path = compute_path(chip, fmt)
    expert_path = compute_path(chip, fmt.experts) if fmt.experts and model.is_moe else path
    notes = list(dict.fromkeys([*model.notes, *path.flags, *expert_path.flags]))
    wl = workload
    wbytes = weight_bytes(model, fmt)
    kv_total = wl.batch * model.kv_bytes(wl.context, wl.kv_format)
    mem = chip.number("mem_gb")
    usable = None if mem is None else mem * 1e9 * (1 - wl.reserve)
    min_chips = None if usable is None else max(1, math.ceil((wbytes + kv_total) / usable))
    n = wl.num_chips if wl.num_chips is not None else min_chips
    if model.max_context and wl.context > model.max_context:
        notes.append(f"context {wl.context} exceeds the model's {model.max_context} positions")
    if usable is None:
        notes.append("memory size not published: fit and chip count not estimated")
    if chip.number("mem_bw_tbs") is None:
        notes.append("memory bandwidth not published: no throughput estimate")
        n_eff = None
    elif n is None:
        n_eff = None
    elif min_chips is not None and n < min_chips:
        n_eff = None  # does not fit: fits is False, min_chips says how many it needs
    else:
        n_eff = n
    prefill = decode = None
    if n_eff is not None:
        if n_eff > 1 and chip.number("scaleup_gbs") is None:
            notes.append("scale-up bandwidth not published: communication not modelled")
        if path.peak_tflops is None or expert_path.peak_tflops is None:
            notes.append(
                f"{path.compute.name} peak not published: no prefill estimate; decode "
                "bounded by bandwidth only"
            )
        else:
            t = wl.context
            prefill = _phase(
                model,
                chip,
                fmt,
                (path, expert_path),
                n_eff,
                t,
                model.prefill_attention_flops(t),
                model.kv_bytes(t, wl.kv_format),
                wl.kv_format,
            )
        decode = _phase(
            model,
            chip,
            fmt,
            (path, expert_path),
            n_eff,
            wl.batch,
            wl.batch * model.decode_attention_flops(wl.context),
            wl.batch * model.kv_read_bytes(wl.context, wl.kv_format),
            wl.kv_format,
        )
        if prefill is not None and any(op.peak is None for op in prefill.ops):
            notes.append("BF16 peak not published: attention compute not bounded")
        for phase, what in ((prefill, "prefill"), (decode, "decode")):
            if phase is not None and phase.comm_s is not None and phase.comm_bound:
                notes.append(
                    f"{what}: tensor-parallel all-reduces ({phase.comm_s * 1e3:.3g} ms) "
                    f"would exceed the compute/memory time on {n_eff} chips"
                )
    return Estimate(
        model,
        chip,
        fmt,
        path,
        expert_path,
        wl,
        n,
        wbytes,
        kv_total,
        usable,
        min_chips,
        prefill,
        decode,
        tuple(notes),
    )


def plan(
    model: ModelSpec,
    chips: list[Chip],
    formats: list[WeightFormat],
    batches: list[int],
    context: int,
    num_chips: int | None = None,
    reserve: float = 0.10,
    kv_format: str = "bf16",
) -> list[Estimate]:
    """Estimates for every chip × format × batch, in that order."""
    return [
        estimate(model, chip, fmt, Workload(b, context, num_chips, reserve, kv_format))
        for chip in chips
        for fmt in formats
        for b in batches
    ]


def model_summary(model: ModelSpec) -> dict[str, Any]:
    """JSON-ready facts of a model (parameter counts, KV bytes, weight bytes per format)."""
    from ue8m0.plan.precision import FORMATS

    return {
        "name": model.name,
        "total_params": model.total_params,
        "active_params": model.active_params,
        "mtp_params": model.mtp_params,
        "attention": model.attention.value,
        "layers": model.layers,
        "moe_layers": model.moe_layers,
        "experts": model.experts,
        "experts_per_token": model.experts_per_token,
        "kv_bytes_per_token": {k: model.kv_bytes_per_token(k) for k in ("bf16", "fp8")},
        "weight_bytes": {name: weight_bytes(model, f) for name, f in FORMATS.items()},
        "weight_bytes_by_class": {name: bytes_by_class(model, f) for name, f in FORMATS.items()},
        "notes": list(model.notes),
    }
