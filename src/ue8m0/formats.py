"""Number formats: one frozen dataclass per kind, every other property derived.

Element formats are named as ml_dtypes names them (``float8_e4m3fn``) and have short aliases
(``e4m3``). The scale format is UE8M0 (``float8_e8m0fnu``): byte ``b`` is ``2**(b - 127)``,
``0xFF`` is NaN, there is no zero, no infinity and no sign.

Encoding of an element code (sign ``s``, exponent field ``E``, mantissa field ``M``)::

    E == 0:  (-1)**s * 2**(1 - bias) * (M / 2**mbits)          subnormal
    E  > 0:  (-1)**s * 2**(E - bias) * (1 + M / 2**mbits)      normal

except for the special codes each format reserves (see :attr:`ElementFormat.nan_codes`,
:attr:`ElementFormat.has_inf`).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.errors import FormatNameError


class Specials(enum.Enum):
    """How an element format spends its codes on non-finite values.

    - ``IEEE``: exponent all ones is Inf (mantissa 0) or NaN (mantissa != 0) — ``e5m2``.
    - ``FN``: no Inf; only exponent and mantissa all ones is NaN (``S.1111.111``) — ``e4m3fn``.
    - ``FNUZ``: no Inf, no negative zero; the single NaN is ``0x80`` (the "negative zero") — AMD.
    - ``NONE``: every code is a finite number — the MX float6/float4 formats.
    """

    IEEE = "ieee"
    FN = "fn"
    FNUZ = "fnuz"
    NONE = "none"


@dataclass(frozen=True)
class ElementFormat:
    """A signed low-precision float element format (FP8, FP6, FP4).

    Only the fields are stored; everything else is a derived property, in the names
    ``numpy.finfo`` uses (``max``, ``smallest_normal``, ``smallest_subnormal``).
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    specials: Specials
    aliases: tuple[str, ...] = ()

    @property
    def bits(self) -> int:
        """Total bits of a code: sign + exponent + mantissa."""
        return 1 + self.ebits + self.mbits

    @property
    def dtype(self) -> np.dtype[Any]:
        """The ml_dtypes numpy dtype that stores this format (one byte per element)."""
        return np.dtype(getattr(ml_dtypes, self.name))

    @property
    def has_inf(self) -> bool:
        """Whether the format encodes infinities."""
        return self.specials is Specials.IEEE

    @property
    def has_nan(self) -> bool:
        """Whether the format has any NaN code."""
        return self.specials is not Specials.NONE

    @property
    def has_negative_zero(self) -> bool:
        """Whether code ``sign bit only`` is -0 (it is NaN in FNUZ formats)."""
        return self.specials is not Specials.FNUZ

    @property
    def sign_mask(self) -> int:
        """The sign bit of a code."""
        return 1 << (self.bits - 1)

    @property
    def max_exponent_field(self) -> int:
        """The largest exponent field a finite value uses."""
        top = (1 << self.ebits) - 1
        return top - 1 if self.specials is Specials.IEEE else top

    @property
    def code_of_max(self) -> int:
        """Code of the largest finite positive value."""
        mant = (1 << self.mbits) - 1
        if self.specials is Specials.FN:
            mant -= 1  # S.1111.111 is NaN
        return (self.max_exponent_field << self.mbits) | mant

    @property
    def emax(self) -> int:
        """Unbiased exponent of :attr:`max` (``floor(log2(max))``), OCP MX's ``emax_elem``."""
        return self.max_exponent_field - self.bias

    @property
    def emin(self) -> int:
        """Unbiased exponent of :attr:`smallest_normal`."""
        return 1 - self.bias

    @property
    def max(self) -> float:
        """Largest finite value."""
        return decode_code(self, self.code_of_max)

    @property
    def smallest_normal(self) -> float:
        """Smallest positive normal value."""
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value (a subnormal)."""
        return math.ldexp(1.0, self.emin - self.mbits)

    @property
    def nan_codes(self) -> tuple[int, ...]:
        """Every code that decodes to NaN."""
        return tuple(c for c in range(1 << self.bits) if math.isnan(decode_code(self, c)))

    @property
    def nan_code(self) -> int | None:
        """The canonical (positive) NaN code this library writes, or None without NaN."""
        if self.specials is Specials.NONE:
            return None
        if self.specials is Specials.FNUZ:
            return self.sign_mask
        if self.specials is Specials.FN:
            return (1 << (self.bits - 1)) - 1
        return (((1 << self.ebits) - 1) << self.mbits) | (1 << (self.mbits - 1))

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ScaleFormat:
    """An unsigned power-of-two scale format: byte ``b`` is ``2**(b - bias)``.

    UE8M0 (``float8_e8m0fnu``): 8 exponent bits, no mantissa, bias 127, ``0xFF`` is NaN, no zero.
    """

    name: str
    ebits: int
    bias: int
    aliases: tuple[str, ...] = ()

    @property
    def dtype(self) -> np.dtype[Any]:
        """The ml_dtypes numpy dtype (view the uint8 codes as it for display)."""
        return np.dtype(getattr(ml_dtypes, self.name))

    @property
    def nan_code(self) -> int:
        """The NaN byte (all ones)."""
        return (1 << self.ebits) - 1

    @property
    def max_code(self) -> int:
        """The byte of the largest scale."""
        return self.nan_code - 1

    @property
    def min_exponent(self) -> int:
        """Exponent of byte 0."""
        return -self.bias

    @property
    def max_exponent(self) -> int:
        """Exponent of :attr:`max_code`."""
        return self.max_code - self.bias

    @property
    def max(self) -> float:
        """Largest scale, ``2**127`` for UE8M0."""
        return math.ldexp(1.0, self.max_exponent)

    @property
    def min(self) -> float:
        """Smallest scale, ``2**-127`` for UE8M0 (a float32 subnormal)."""
        return math.ldexp(1.0, self.min_exponent)

    def decode(self, code: int) -> float:
        """The value of one byte (NaN for :attr:`nan_code`)."""
        if not 0 <= code <= self.nan_code:
            raise ValueError(f"{self.name}: code {code} out of range")
        return math.nan if code == self.nan_code else math.ldexp(1.0, code - self.bias)

    def __str__(self) -> str:
        return self.name


def decode_code(fmt: ElementFormat, code: int) -> float:
    """Decode one element code from the format's fields (the readable scalar oracle)."""
    if not 0 <= code < (1 << fmt.bits):
        raise ValueError(f"{fmt.name}: code {code} out of range")
    sign = -1.0 if code & fmt.sign_mask else 1.0
    exp_field = (code >> fmt.mbits) & ((1 << fmt.ebits) - 1)
    mant = code & ((1 << fmt.mbits) - 1)
    top = (1 << fmt.ebits) - 1
    if fmt.specials is Specials.FNUZ and code == fmt.sign_mask:
        return math.nan
    if fmt.specials is Specials.IEEE and exp_field == top:
        return sign * math.inf if mant == 0 else math.nan
    if fmt.specials is Specials.FN and exp_field == top and mant == (1 << fmt.mbits) - 1:
        return math.nan
    if exp_field == 0:
        return sign * math.ldexp(mant, fmt.emin - fmt.mbits)
    return sign * math.ldexp((1 << fmt.mbits) | mant, exp_field - fmt.bias - fmt.mbits)


FLOAT8_E4M3FN = ElementFormat("float8_e4m3fn", 4, 3, 7, Specials.FN, ("e4m3", "e4m3fn", "fp8"))
FLOAT8_E5M2 = ElementFormat("float8_e5m2", 5, 2, 15, Specials.IEEE, ("e5m2",))
FLOAT8_E4M3FNUZ = ElementFormat("float8_e4m3fnuz", 4, 3, 8, Specials.FNUZ, ("e4m3fnuz",))
FLOAT8_E5M2FNUZ = ElementFormat("float8_e5m2fnuz", 5, 2, 16, Specials.FNUZ, ("e5m2fnuz",))
FLOAT6_E2M3FN = ElementFormat("float6_e2m3fn", 2, 3, 1, Specials.NONE, ("e2m3", "fp6_e2m3"))
FLOAT6_E3M2FN = ElementFormat("float6_e3m2fn", 3, 2, 3, Specials.NONE, ("e3m2", "fp6_e3m2"))
FLOAT4_E2M1FN = ElementFormat("float4_e2m1fn", 2, 1, 1, Specials.NONE, ("e2m1", "fp4"))

UE8M0 = ScaleFormat("float8_e8m0fnu", 8, 127, ("ue8m0", "e8m0"))

ELEMENT_FORMATS: tuple[ElementFormat, ...] = (
    FLOAT8_E4M3FN,
    FLOAT8_E5M2,
    FLOAT8_E4M3FNUZ,
    FLOAT8_E5M2FNUZ,
    FLOAT6_E2M3FN,
    FLOAT6_E3M2FN,
    FLOAT4_E2M1FN,
)


def _index() -> dict[str, ElementFormat]:
    table: dict[str, ElementFormat] = {}
    for fmt in ELEMENT_FORMATS:
        for key in (fmt.name, *fmt.aliases):
            table[key] = fmt
    return table


_BY_NAME = _index()


def element_format(fmt: str | ElementFormat) -> ElementFormat:
    """Look an element format up by ml_dtypes name or alias (case-insensitive)."""
    if isinstance(fmt, ElementFormat):
        return fmt
    if not isinstance(fmt, str):
        raise FormatNameError(f"element format must be a name or ElementFormat, got {fmt!r}")
    found = _BY_NAME.get(fmt.strip().lower())
    if found is None:
        names = ", ".join(f"{f.name} ({'/'.join(f.aliases)})" for f in ELEMENT_FORMATS)
        raise FormatNameError(f"unknown element format {fmt!r}; known: {names}")
    return found


@functools.cache
def decode_table(fmt: ElementFormat) -> np.ndarray:
    """float32 value of every code of ``fmt`` (length ``2**bits``), from :func:`decode_code`."""
    return np.array([decode_code(fmt, c) for c in range(1 << fmt.bits)], dtype=np.float32)
