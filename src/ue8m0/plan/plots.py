"""PNG plots of a plan: a roofline per chip with the model's op classes, decode tok/s per chip.

matplotlib is the optional extra ``plot``; figures come from :func:`ue8m0.extras.figure` (a
``Figure`` drawn by Agg, no pyplot): plotting never switches matplotlib's global backend, and a
missing matplotlib is reported by :func:`ue8m0.extras.require` like every missing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ue8m0.extras import figure
from ue8m0.plan.estimate import Estimate
from ue8m0.plan.precision import Compute


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def plot_roofline(estimates: Sequence[Estimate], path: Path) -> Path:
    """Roofline of one chip (its BF16/FP8/FP4/INT8 roofs) with every estimate's op classes."""
    chip = estimates[0].chip
    bw = chip.number("mem_bw_tbs")
    fig: Any = figure(10, 5)
    ax = fig.subplots()
    if bw is not None:
        xs = [0.1 * 1.25**i for i in range(70)]
        for compute in Compute:
            peak = chip.number(compute.value)
            if peak is not None:
                ax.plot(xs, [min(peak, bw * x) for x in xs], label=f"{compute.name} roof {peak:g}")
    markers = {"dense": "o", "experts": "s", "attention": "^"}
    for e in estimates:
        for phase_name, phase in (("decode", e.decode), ("prefill", e.prefill)):
            if phase is None:
                continue
            for op in phase.ops:
                n = e.num_chips or 1
                achieved = op.flops / op.time_s / n / 1e12
                ax.scatter(
                    op.intensity,
                    achieved,
                    marker=markers.get(op.name, "x"),
                    label=f"{e.fmt.name} {phase_name} b{phase.tokens} {op.name}",
                    s=28,
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable TFLOPS per chip (upper bound)")
    ax.set_title(f"{chip.name}: {estimates[0].model.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(path, dpi=120)
    return path


def plot_decode_bars(estimates: Sequence[Estimate], path: Path) -> Path:
    """Grouped bars: decode tokens/s per chip for each chip, one bar per format; one panel per
    batch. A missing bar is an estimate the planner could not make (or that did not fit)."""
    batches = sorted({e.workload.batch for e in estimates})
    chips = list(dict.fromkeys(e.chip.key for e in estimates))
    formats = list(dict.fromkeys(e.fmt.name for e in estimates))
    fig: Any = figure(max(6, 1.1 * len(chips)), 3.2 * len(batches))
    axes = fig.subplots(len(batches), 1, squeeze=False)
    width = 0.8 / len(formats)
    for ax, batch in zip(axes[:, 0], batches, strict=True):
        for j, fmt in enumerate(formats):
            for i, chip in enumerate(chips):
                found = [
                    e
                    for e in estimates
                    if e.chip.key == chip and e.fmt.name == fmt and e.workload.batch == batch
                ]
                value = found[0].decode_tok_s_per_chip if found else None
                x = i + j * width
                ax.bar(x, value or 0.0, width, color=f"C{j}", label=fmt if i == 0 else None)
                if value is None:
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(chips))], chips, rotation=30)
        ax.set_ylabel("decode tok/s per chip")
        ax.set_title(f"{estimates[0].model.name}, batch {batch} (upper bounds)")
        ax.legend()
    fig.savefig(path, dpi=120)
    return path


def write_plots(estimates: Sequence[Estimate], directory: Path) -> list[Path]:
    """``plan_roofline_<chip>.png`` per chip and ``plan_decode.png``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for key in dict.fromkeys(e.chip.key for e in estimates):
        mine = [e for e in estimates if e.chip.key == key]
        out.append(plot_roofline(mine, directory / f"plan_roofline_{_slug(key)}.png"))
    out.append(plot_decode_bars(estimates, directory / "plan_decode.png"))
    return out
