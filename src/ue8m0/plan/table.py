"""Text renderings of plans, chips and calibration points (what the CLI prints)."""

from __future__ import annotations

from collections.abc import Sequence

from ue8m0.plan.calibrate import PHASE_UNITS, Point
from ue8m0.plan.chips import NUMBERS, Chip
from ue8m0.plan.estimate import UPPER_BOUND, Estimate, bytes_by_class
from ue8m0.plan.models import ModelSpec
from ue8m0.plan.precision import WeightFormat


def _num(x: float | None, digits: int = 3) -> str:
    """Compact number: ``—`` for None, ``12,345`` from 100 up, ``1.23M`` from a million."""
    if x is None:
        return "—"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.{digits}g}M"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def model_line(model: ModelSpec, kv_format: str) -> str:
    """One line of model facts."""
    mtp = f"; MTP layers {model.mtp_params / 1e9:.1f} B not loaded" if model.mtp_params else ""
    if model.aux_params:
        mtp += f"; lookup tables and vision {model.aux_params / 1e9:.1f} B beside the total"
    moe = f", MoE {model.experts} experts top-{model.experts_per_token}" if model.is_moe else ""
    return (
        f"{model.name}: {model.total_params / 1e9:.1f} B parameters, "
        f"{model.active_params / 1e9:.1f} B active per token{moe}{mtp}; "
        f"{model.attention.value.upper()} KV cache {model.kv_bytes_per_token(kv_format):,} "
        f"B/token ({kv_format}{', long-context slope; + sliding window' if model.hybrid else ''})"
    )


def class_lines(model: ModelSpec, formats: Sequence[WeightFormat]) -> list[str]:
    """Weight GB per tensor class for each format (classes with no weights left out)."""
    lines = []
    for fmt in formats:
        parts = [
            f"{name.replace('_', ' ')} {b / 1e9:,.2f}"
            for name, b in bytes_by_class(model, fmt).items()
            if b
        ]
        lines.append(f"weights GB, {fmt.name}: " + ", ".join(parts))
    return lines


def _math(e: Estimate) -> str:
    if e.expert_path == e.path:
        return e.path.label
    return f"{e.path.label}; experts {e.expert_path.label}"


def render_plan(model: ModelSpec, estimates: Sequence[Estimate]) -> str:
    """The plan table with numbered notes and the upper-bound statement."""
    if not estimates:
        return model_line(model, "bf16")
    wl = estimates[0].workload
    chips = "fewest that fit" if wl.num_chips is None else str(wl.num_chips)
    lines = [
        model_line(model, wl.kv_format),
        f"context {wl.context} tokens (prefill: one prompt of that length), KV {wl.kv_format}, "
        f"memory reserve {wl.reserve:.0%}, chips: {chips}",
        *class_lines(model, list({e.fmt.name: e.fmt for e in estimates}.values())),
        "",
    ]
    notes: dict[str, int] = {}
    header = [
        "CHIP",
        "FORMAT",
        "MATH",
        "CHIPS",
        "FITS",
        "WEIGHTS GB",
        "KV GB",
        "GB/CHIP",
        "PREFILL s",
        "PREFILL tok/s/chip",
        "BATCH",
        "DECODE tok/s",
        "tok/s/chip",
        "tok/s/seq",
        "DECODE BOUND",
        "NOTES",
    ]
    rows = []
    for e in estimates:
        refs = [notes.setdefault(n, len(notes) + 1) for n in e.notes]
        fits = "?" if e.fits is None else ("yes" if e.fits else f"no ({e.min_chips})")
        rows.append(
            [
                e.chip.key,
                e.fmt.name,
                _math(e),
                _num(e.num_chips),
                fits,
                _num(e.weight_bytes / 1e9, 4),
                _num(e.kv_bytes / 1e9),
                _num(None if e.memory_per_chip is None else e.memory_per_chip / 1e9),
                _num(e.prefill_s),
                _num(e.prefill_tok_s_per_chip),
                str(e.workload.batch),
                _num(e.decode_tok_s),
                _num(e.decode_tok_s_per_chip),
                _num(e.decode_tok_s_per_seq),
                "—" if e.decode is None else e.decode.bottleneck,
                ",".join(str(r) for r in refs),
            ]
        )
    lines.append(render_table(header, rows))
    lines.append("")
    lines += [f"[{i}] {text}" for text, i in notes.items()]
    lines.append(UPPER_BOUND)
    return "\n".join(lines)


def render_chips(chips: Sequence[Chip]) -> str:
    """The chip database as a table (values only; ``--json`` has sources and confidence)."""
    header = [
        "KEY",
        "NAME",
        "CLASS",
        "FP8",
        "MX",
        *(f"{n.split('_')[0].upper()} {u}" for n, (u, _) in NUMBERS.items()),
        "YEAR",
    ]
    rows = [
        [
            c.key,
            c.name,
            c.capability_class,
            c.fp8.value,
            c.block_scale.value,
            *(_num(c.number(n), 4) for n in NUMBERS),
            c.year,
        ]
        for c in chips
    ]
    legend = (
        "CLASS A: FP8 + UE8M0 block-scale MMA; B: FP8, scales in software; C: FP8 FNUZ "
        "only; D: no FP8 math (FP8 plans are weight-only). — = not published."
    )
    return render_table(header, rows) + "\n\n" + legend


def render_calibration(points: Sequence[Point]) -> str:
    """Measured data points beside the estimates, with the ratio."""
    header = ["ID", "CHIP", "FORMAT", "PHASE", "UNIT", "MEASURED", "ESTIMATE", "RATIO", "SOURCE"]
    rows = [
        [
            p.id,
            p.chip,
            p.format,
            p.phase,
            PHASE_UNITS[p.phase],
            _num(p.measured, 4),
            _num(p.estimate, 4),
            "—" if p.ratio is None else f"{p.ratio:.2f}",
            p.src,
        ]
        for p in points
    ]
    lines = [render_table(header, rows), ""]
    lines += [f"{p.id}: {p.system}; {p.assumed}" for p in points]
    lines.append(
        "RATIO = measured / estimate: the fraction of the upper bound reached "
        "(above 1: a database number is too low)."
    )
    return "\n".join(lines)
