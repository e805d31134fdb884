"""Weight formats a plan compares, their bytes, and which compute roof each gets on a chip.

A :class:`WeightFormat` stores the linear weights of the decoder layers (attention, MLP, experts)
in ``element_bits`` with one ``scale_bytes`` scale per ``block`` of a ``(rows, cols)`` weight;
embedding, head, router, norms and biases stay BF16. Bytes of one ``(rows, cols)`` weight::

    ceil(rows · cols · element_bits / 8) + ceil(rows / br) · ceil(cols / bc) · scale_bytes

(``bc = -1`` means one scale per whole row). :func:`compute_path` picks the roof a GEMM of the
format runs at on a chip (see :class:`Compute`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ue8m0.plan.chips import BlockScaleMath, Chip, Fp8Math
from ue8m0.plan.errors import PlanError


class Compute(enum.Enum):
    """The tensor-math roof a GEMM runs at; the value is the chip field holding its peak."""

    BF16 = "bf16_tflops"
    FP8 = "fp8_tflops"
    FP4 = "fp4_tflops"
    INT8 = "int8_tops"


@dataclass(frozen=True)
class WeightFormat:
    """How linear weights are stored, and the math they want."""

    name: str
    label: str
    element_bits: int
    block: tuple[int, int] | None  # None: no scales
    scale_bytes: int
    wants: Compute

    def weight_bytes(self, rows: int, cols: int) -> int:
        """Bytes of one ``(rows, cols)`` weight including its scales (module docstring)."""
        data = math.ceil(rows * cols * self.element_bits / 8)
        if self.block is None:
            return data
        br, bc = self.block
        n_scales = math.ceil(rows / br) * (1 if bc == -1 else math.ceil(cols / bc))
        return data + n_scales * self.scale_bytes

    @property
    def scale_overhead(self) -> float:
        """Scale bytes per data byte for a large weight (0.006 % for FP8 128×128 UE8M0)."""
        if self.block is None or self.block[1] == -1:
            return 0.0
        return self.scale_bytes * 8 / (self.block[0] * self.block[1] * self.element_bits)


FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("bf16", "BF16", 16, None, 0, Compute.BF16),
        WeightFormat(
            "fp8",
            "FP8 E4M3, UE8M0 scale per 128x128 (DeepSeek-V3.1)",
            8,
            (128, 128),
            1,
            Compute.FP8,
        ),
        WeightFormat("mxfp8", "MXFP8 E4M3, UE8M0 scale per 1x32", 8, (1, 32), 1, Compute.FP8),
        WeightFormat("mxfp4", "MXFP4 E2M1, UE8M0 scale per 1x32", 4, (1, 32), 1, Compute.FP4),
        WeightFormat(
            "int8", "INT8 W8A8, FP32 scale per output channel", 8, (1, -1), 4, Compute.INT8
        ),
    )
}


def get_format(name: str) -> WeightFormat:
    """A format by case-insensitive name."""
    try:
        return FORMATS[name.strip().lower()]
    except KeyError:
        raise PlanError(f"unknown format {name!r}; use one of {', '.join(FORMATS)}") from None


def parse_formats(text: str) -> list[WeightFormat]:
    """Comma-separated format names (``bf16,fp8``)."""
    return [get_format(p) for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class ComputePath:
    """The roof a format's GEMMs get on a chip: ``peak_tflops`` (None when not published)."""

    compute: Compute
    peak_tflops: float | None
    weight_only: bool
    flags: tuple[str, ...]

    @property
    def label(self) -> str:
        """Short label for tables: ``fp8``, ``bf16 (w-only)``."""
        base = self.compute.name.lower()
        return f"{base} (w-only)" if self.weight_only else base


def _fp8_flags(chip: Chip, fmt: WeightFormat) -> list[str]:
    flags = []
    if chip.fp8 is Fp8Math.FNUZ:
        flags.append("FP8 is FNUZ only: e4m3fn weights converted to e4m3fnuz at load")
    elif chip.fp8 is Fp8Math.YES:
        flags.append("FP8 encoding not published: e4m3fn compatibility unverified")
    if chip.block_scale is BlockScaleMath.MX:
        flags.append("UE8M0 block scales consumed by the MMA (MX)")
    else:
        where = "unknown" if chip.block_scale is BlockScaleMath.UNKNOWN else "none"
        flags.append(
            f"block-scale MMA {where}: {fmt.name} scales applied in software (kernel-dependent)"
        )
    return flags


def compute_path(chip: Chip, fmt: WeightFormat) -> ComputePath:
    """Which roof ``fmt``'s GEMMs get on ``chip``.

    - BF16: the BF16 roof.
    - FP8 / MXFP8: the FP8 roof where the chip has FP8 math; otherwise weight-only (FP8 weights
      dequantized to BF16 in the kernel: half the bytes, the BF16 roof, no FP8 speed-up).
    - MXFP4: the FP4 roof where the MMA takes MX scales and FP4 is published; otherwise
      weight-only at the FP8 roof (W4A8) where the chip has FP8 math, else at BF16 (W4A16).
    - INT8: the INT8 roof (W8A8) where published, else weight-only at BF16.
    """
    bf16 = chip.number("bf16_tflops")
    if fmt.wants is Compute.BF16:
        return ComputePath(Compute.BF16, bf16, False, ())
    fp8_native = chip.fp8.native
    if fmt.wants is Compute.FP8:
        if fp8_native:
            return ComputePath(
                Compute.FP8, chip.number("fp8_tflops"), False, tuple(_fp8_flags(chip, fmt))
            )
        why = "unknown (disputed or unpublished)" if chip.fp8 is Fp8Math.UNKNOWN else "no"
        return ComputePath(
            Compute.BF16,
            bf16,
            True,
            (
                f"{why} FP8 math: weight-only, FP8 dequantized to BF16 in the kernel "
                "(bandwidth gain only; needs a W8A16 kernel)",
            ),
        )
    if fmt.wants is Compute.FP4:
        fp4 = chip.number("fp4_tflops")
        if chip.block_scale is BlockScaleMath.MX and fp4 is not None:
            return ComputePath(Compute.FP4, fp4, False, ("MXFP4 MMA with UE8M0 scales",))
        if fp8_native:
            return ComputePath(
                Compute.FP8,
                chip.number("fp8_tflops"),
                True,
                ("no MXFP4 math: weight-only, FP4 dequantized to FP8 (W4A8 kernel)",),
            )
        return ComputePath(
            Compute.BF16,
            bf16,
            True,
            ("no FP4 or FP8 math: weight-only, FP4 dequantized to BF16 (W4A16 kernel)",),
        )
    int8 = chip.number("int8_tops")
    if int8 is not None:
        return ComputePath(Compute.INT8, int8, False, ("INT8 W8A8: weights requantized from FP8",))
    return ComputePath(Compute.BF16, bf16, True, ("INT8 peak not published: weight-only at BF16",))
