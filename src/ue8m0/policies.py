"""Policies: one enum per decision, each member's formula in its docstring.

Notation: ``m`` is the element format's max (448 for e4m3), ``emax`` its exponent
(``floor(log2 m)``: 8 for e4m3), ``a = max(amax, eps)`` with ``amax`` the largest ``|x|`` of a
block (float32), ``b`` the UE8M0 scale byte and ``scale = 2**(b - 127)``. Every power-of-two rule
clamps ``b`` to ``[0, 254]``. Elements are ``RNE(x * (1 / scale))`` saturated to ``±m``.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from ue8m0.errors import FormatNameError

#: DeepSeek-V3.1 and DeepGEMM clamp a block's amax to at least this before computing the scale
DEFAULT_EPS = 1e-4


class ScaleRule(enum.Enum):
    """How a block's scale is computed from its amax."""

    RCEIL = "rceil"
    """``scale = 2**ceil(log2(a / m))``, taken from the bits of the float32 ratio ``r = a / m``.

    Normal ``r``: ``b = E(r) + (M(r) != 0)`` with ``E``/``M`` the exponent and mantissa fields,
    clamped to 254. Subnormal ``r`` (below ``2**-126``): ``b = 1 if M(r) > 0x400000 else 0``
    (torchao RCEIL and Transformer Engine; DeepGEMM clamps to ``b >= 1`` and differs only there).
    Never saturates: ``|x| / scale <= m``. The UE8M0 rule of DeepSeek-V3.1 weights, DeepGEMM,
    cuBLAS, transformers and torchao RCEIL.
    """

    LOG2 = "log2"
    """``scale = 2**ceil(log2f(a / m))`` with a correctly rounded float32 ``log2``.

    DeepSeek-V3.1's Triton ``act_quant``. Differs from ``rceil`` when ``a / m = 2**k * (1 + t)``
    with ``t`` so small that float32 ``log2`` rounds to the integer ``k``: the scale is then
    ``2**k`` and one element may exceed ``m`` by a hair and saturate (vector V08: amax 1.7500001
    gives byte 119 here, 120 under ``rceil``). GPU ``log2`` approximations may differ again.
    """

    FLOOR = "floor"
    """OCP MX v1.0: ``scale = 2**(floor(log2 a) - emax)``; elements above ``m`` saturate.

    Computed from the float32 exponent of ``a``; clamped to ``[-127, 127]``.
    """

    CEIL = "ceil"
    """torchao CEIL: ``scale = 2**(ceil(log2 a) - emax)`` — a ceil of ``a``, not of ``a / m``.

    ``ceil(log2 a)`` is ``E(a) - 127 + (M(a) != 0)``. One exponent above ``rceil`` when the
    significand of ``a`` is in ``(1, 1.75]`` (e.g. amax = 448).
    """

    EVEN = "even"
    """torchao EVEN: round ``a`` to the element's mantissa bits, then FLOOR.

    ``bits(a) + (1 << (23 - mbits - 1))`` with the mantissa masked off, then
    ``scale = 2**(E - 127 - emax)``.
    """

    FP32 = "fp32"
    """No power-of-two rounding: ``scale = float32(a / m)``; elements ``RNE(x * float32(1/scale))``.

    DeepGEMM's ``use_ue8m0=False`` convention. There is no scale byte (``scale_codes`` is None).
    With ``eps=0`` an all-zero block gets scale 0 and zero elements.
    """

    FP32_DIV = "fp32-div"
    """``fp32`` with elements divided: ``scale = float32(a / m)``; ``RNE(x / scale)``.

    DeepSeek-V3's ``act_quant`` (``y = x / s``) and DeepSeek-V4's FP8 ``act_quant``. With a
    float32 scale, ``x / s`` and ``x * fl32(1/s)`` round differently for some ``x`` (273 of
    1,048,576 elements in a measured case); for power-of-two scales they are the same. An
    all-zero block with ``eps=0`` (scale 0) gets zero elements.
    """

    @property
    def is_power_of_two(self) -> bool:
        """Whether the scale is a UE8M0 power of two (every rule but ``fp32``/``fp32-div``)."""
        return self not in (ScaleRule.FP32, ScaleRule.FP32_DIV)

    @property
    def kernel_id(self) -> int:
        """The integer the compiled kernels know this rule by: its position in the enum."""
        return list(ScaleRule).index(self)

    @classmethod
    def names(cls, power_of_two_only: bool = False) -> list[str]:
        """Every rule's name (for CLI choices), optionally the power-of-two rules only."""
        return [r.value for r in cls if r.is_power_of_two or not power_of_two_only]

    @classmethod
    def parse(cls, value: str | ScaleRule) -> ScaleRule:
        """The rule for a name (case-insensitive) or the rule itself."""
        return _parse(cls, value, "scale rule")


class ScaleSearch(enum.Enum):
    """Whether to refine each block's power-of-two scale after the rule has chosen it."""

    NONE = "none"
    """Keep the rule's scale."""

    MSE = "mse"
    """Per block, ``b' = argmin over {b, b - 1} of sum((dequant_b'(x) - x)**2)`` (ties keep
    ``b``; elements above ``m`` under ``b - 1`` saturate). Never worse than the rule, block by
    block; deterministic. Power-of-two rules only."""

    @classmethod
    def parse(cls, value: str | ScaleSearch | None) -> ScaleSearch:
        """The search for a name (case-insensitive; None means ``none``)."""
        return cls.NONE if value is None else _parse(cls, value, "scale search")


class NonFinite(enum.Enum):
    """What quantize does with NaN or Inf in a block."""

    RAISE = "raise"
    """Raise ``NonFiniteError`` naming the first bad block's index and the bad value."""

    PROPAGATE = "propagate"
    """The block's scale byte is ``0xFF`` (NaN; float32 NaN for ``fp32``) and all its elements
    are the format's NaN code (zero codes for formats without NaN), as OCP MX and torchao do."""

    @classmethod
    def parse(cls, value: str | NonFinite) -> NonFinite:
        """The policy for a name (case-insensitive) or the policy itself."""
        return _parse(cls, value, "nonfinite policy")


_E = TypeVar("_E", bound=enum.Enum)


def _parse(cls: type[_E], value: object, what: str) -> _E:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if member.value == value.strip().lower():
                return member
    names = ", ".join(str(m.value) for m in cls)
    raise FormatNameError(f"unknown {what} {value!r}; known: {names}")
