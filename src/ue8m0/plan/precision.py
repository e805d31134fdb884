"""Weight formats a plan compares, their bytes, and which compute roof each gets on a chip.

A :class:`WeightFormat` stores the linear weights of the decoder layers (attention, MLP, experts)
in ``element_bits`` with one ``scale_bytes`` scale per ``block`` of a ``(rows, cols)`` weight;
embedding, head, router, norms and biases stay BF16. Bytes of one ``(rows, cols)`` weight::

    ceil(rows · cols · element_bits / 8) + ceil(rows / br) · ceil(cols / bc) · scale_bytes

(``bc = -1`` means one scale per whole row). A format may store the routed experts in another
format (``experts``: DeepSeek-V4's FP4 experts beside FP8 dense weights). :func:`compute_path`
picks the roof a GEMM of the format runs at on a chip (see :class:`Compute`). :data:`STORED` are
the formats a release keeps some tensors in whatever the plan (FP32 norms, BF16 compressors).
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
    experts: WeightFormat | None = None

    def for_experts(self, routed: bool) -> WeightFormat:
        """The format of routed-expert weights (``routed``) or of the other quantizable ones."""
        return self.experts if routed and self.experts is not None else self

    @property
    def bits_per_weight(self) -> float:
        """Bits per element of a large weight, scales included (4.25 for E2M1 with a UE8M0 scale
        per 32; a per-row scale counts as 0)."""
        if self.block is None or self.block[1] == -1:
            return float(self.element_bits)
        return self.element_bits + self.scale_bytes * 8 / (self.block[0] * self.block[1])

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


_FP4_E2M1 = WeightFormat(
    "fp4-e2m1", "FP4 E2M1, UE8M0 scale per 1x32 (DeepSeek-V4 experts)", 4, (1, 32), 1, Compute.FP4
)

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
        WeightFormat(
            "fp4-experts",
            "FP8 E4M3 128x128 UE8M0; routed experts FP4 E2M1, UE8M0 per 1x32 (DeepSeek-V4)",
            8,
            (128, 128),
            1,
            Compute.FP8,
            experts=_FP4_E2M1,
        ),
    )
}

#: formats a release keeps a tensor in whatever the plan (:attr:`Weight.stored` keys)
STORED: dict[str, WeightFormat] = {
    "bf16": FORMATS["bf16"],
    "f32": WeightFormat("f32", "FP32", 32, None, 0, Compute.BF16),
    "i64": WeightFormat("i64", "INT64 (lookup table)", 64, None, 0, Compute.BF16),
    "mxfp8": FORMATS["mxfp8"],
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
                (
                    "no FP4 tensor math: weight-only, FP4 weights dequantized to FP8 in the kernel "
                    "(W4A8: FP4 bytes, FP8 roof; kernel-dependent; dequantizing at load instead "
                    "gives the fp8 plan's bytes)",
                ),
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
