"""DeepSeek-V4's FP4 numerics: its FP4 quantization rule and its FP4 -> FP8 cast, bit-exact.

Sources (read 2026; quoted only to pin behaviour, the code here is ours):

* DeepSeek-V4 release, ``inference/convert.py`` (Hugging Face repos ``deepseek-ai/DeepSeek-V4-Flash``
  and ``-Pro``, https://huggingface.co/deepseek-ai/DeepSeek-V4-Pro/blob/main/inference/convert.py;
  read through several verbatim copies in public GitHub repositories, which agree line for line):
  ``FP4_TABLE = [0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, ..., -6]`` as float32 (**code 8 is +0.0**);
  ``cast_e2m1fn_to_e4m3fn(x, scale)`` asserts ``int8 [out, in/2]``, ``out`` and ``in`` multiples
  of 128 and ``scale [out, in/32]``; unpacks ``low = x & 0x0F``, ``high = (x >> 4) & 0x0F``,
  ``stack([TABLE[low], TABLE[high]], -1).flatten`` (element 2i is the **low** nibble); per
  128x128 tile takes ``scale.float().amax() / 2**6`` (``MAX_OFFSET_BITS = 6``: 6 * 2**6 = 384
  <= 448) as the new scale ``S``; ``offset = scale / S`` and ``x * offset`` in **float32**; then
  ``x.to(torch.float8_e4m3fn)`` and ``S.to(torch.float8_e8m0fnu)``. It runs on the CPU
  (``safe_open(..., device="cpu")``), so torch's CPU casts define the bytes: e4m3 rounds to
  nearest even keeping the sign (a negative product that rounds to zero is 0x80); e8m0 of a
  float32 subnormal is byte 1 only if its mantissa exceeds 0x400000, else 0 (measured with
  torch 2.13: 2**-128, 2**-133 -> 0); NaN -> 0xFF. Its docstring calls the cast lossless.
* DeepSeek-V4 release, ``inference/kernel.py`` (tilelang; vLLM cites
  https://huggingface.co/deepseek-ai/DeepSeek-V4-Pro/blob/main/inference/kernel.py#L163 for the
  floor): ``fp4_quant_kernel`` per 32 inputs of a row: ``amax = max(amax, 6 * 2**-126)``,
  ``s = fast_round_scale(amax, 1/6)`` = ``fast_pow2(fast_log2_ceil(amax * fp4_max_inv))`` where
  ``fast_log2_ceil`` reads the float32 bits (exponent field - 127, plus one if any mantissa bit
  is set) and ``fast_pow2(e)`` builds ``(e + 127) << 23``; elements ``T.clamp(x / s, -6, 6)``
  cast to ``float4_e2m1fn`` (round to nearest even), scale cast to ``float8_e8m0fnu``. The
  FP8 ``act_quant`` uses the same bit ceiling with ``amax >= 1e-4`` and 1/448, and divides too.
* transformers 5.24 (installed): ``integrations/finegrained_fp8.py`` ``_FP4_E2M1_LUT =
  (0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, ...)`` (**code 8 is -0.0**), ``low = u8 & 0xF`` first,
  dequantization ``(q * s).to(output_dtype)`` in float32; ``FP8Experts`` with
  ``expert_dtype == "fp4"``: int8 weights with K halved, one scale per row per 32 inputs
  (``sf_gran_n=1, sf_gran_k=32``), float8_e8m0fnu scales under ``scale_fmt == "ue8m0"``.

What follows from them (each checked by the tests):

* **FP4 rule** (:func:`quantize_fp4_v4`): ``r = fl32(max(amax, 6 * 2**-126) * fl32(1/6))``; the
  floor keeps ``r >= 2**-126`` (``6 * fl32(1/6)`` rounds to exactly 1), so ``r`` is never
  subnormal and the bit ceiling is exact; ``e = exp(r) - 127 + (mantissa(r) != 0)`` lies in
  [-126, 126] for finite input, the byte is ``e + 127``. ``x / s`` equals ``x * (1/s)`` bit for
  bit (``1/s`` is an exact power of two in range): no difference for these scales. The rule is
  ue8m0's ``rceil`` on blocks ``(1, 32)`` with ``eps = 6 * 2**-126``: ``amax / 6`` and
  ``amax * fl32(1/6)`` have the same bit ceiling for every float32 (a test sweeps whole
  binades), so the fast path is :func:`ue8m0.quantize`. Elements: saturate at +-6, round to
  the nearest E2M1 value, ties to the even code (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2,
  2.5 -> 2, 3.5 -> 4, 5 -> 4). **Sign of zero**: a negative input that rounds to zero (and
  -0.0) gives code 8, as an IEEE conversion that keeps the sign does (``cvt.rn.satfinite.
  e2m1x2.f32`` on the GPU, ml_dtypes); compare with release bytes up to the sign of zero.
  Non-finite input raises (DeepSeek's GPU kernel gives no defined bytes for it).
* **Cast** (:func:`cast_fp4_to_fp8_v4`): with group byte ``bg`` and tile maximum ``bmax``, the
  float32 ``S = 2**(bmax - 133)`` is exact, the offset is ``2**(bg - bmax + 6)`` (0 below
  2**-149) and the product is exact unless it underflows; so the element is
  ``e4m3(value * 2**d)``, ``d = bg - bmax + 6 <= 6``, exact for ``d >= -8`` (a span of at most 14
  binades: ``0.5 * 2**-8`` is e4m3's smallest subnormal), rounded or flushed below. Code 8 is
  +0.0 (0x00); negative codes that flush give 0x80. The tile byte is ``max(bmax - 6, 0)``: for
  ``bmax < 6`` DeepSeek stores 2**-127 while its elements assumed 2**(bmax-133), so every
  nonzero element of such a tile changes (flagged lossy). Partial tiles (DeepSeek asserts they
  do not occur) take the maximum over the groups present. A 0xFF scale raises, or under
  ``nonfinite="propagate"`` gives what DeepSeek's CPU cast gives: tile byte 0xFF and every
  element of the tile 0x7F.
* **Lossy tiles**: a tile is lossy iff some element's value changes:
  ``e4m3(code) * 2**(tile_byte - 127) != fp4(code) * 2**(bg - 127)`` (-0 equals +0).
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ue8m0.errors import InputError, NonFiniteError
from ue8m0.formats import FLOAT4_E2M1FN, FLOAT8_E4M3FN, UE8M0, decode_table
from ue8m0.fp4 import E2M1_MAGNITUDES, GROUP, check_fp4_pair, pack_fp4
from ue8m0.policies import NonFinite

#: FP8 tile edge of the cast (DeepSeek's ``fp8_block_size``)
TILE = 128
#: ``MAX_OFFSET_BITS``: the tile scale is the largest group scale over 2**6 (6 * 2**6 <= 448)
MAX_OFFSET_BITS = 6
#: floor of a group's amax in the FP4 rule (float32 ``6 * 2**-126``)
AMAX_FLOOR = float(np.float32(6.0 * 2.0**-126))
#: float32 ``1/6``, the rule's multiplier (0x3E2AAAAB)
INV6 = float(np.float32(1.0 / 6.0))
#: e4m3 code of a NaN product (torch's CPU cast of the positive NaN DeepSeek's cast makes)
E4M3_NAN = 0x7F
#: smallest offset exponent whose products are all exact in e4m3 (0.5 * 2**-8 = 2**-9)
EXACT_MIN_D = -8


class Fp8Cast(NamedTuple):
    """Result of :func:`cast_fp4_to_fp8_v4`: unpack it or read the fields."""

    codes: np.ndarray
    """e4m3 codes, uint8 ``[out, in]``."""
    scale_bytes: np.ndarray
    """UE8M0 tile scales, uint8 ``[ceil(out/128), ceil(in/128)]``."""
    lossy: LossyTiles
    """Which tiles change value, and by how much."""


@dataclass(frozen=True)
class LossyTiles:
    """Tiles whose decoded values differ from the FP4 weight's (an exact, per-element test).

    ``max_abs_error[i, j]`` is the largest ``|e4m3 * S - fp4 * s_group|`` of tile ``(i, j)``
    in float64 (0.0 for exact tiles, NaN for NaN tiles); ``indices`` lists the lossy tiles in
    C order, ``int64 [count, 2]``. NaN tiles are not counted as lossy.
    """

    max_abs_error: np.ndarray
    indices: np.ndarray

    @property
    def count(self) -> int:
        """Number of lossy tiles."""
        return int(self.indices.shape[0])

    @classmethod
    def from_errors(cls, errors: np.ndarray) -> LossyTiles:
        """The record of a per-tile error grid (lossy where the error is > 0)."""
        with np.errstate(invalid="ignore"):
            lossy = errors > 0
        return cls(errors, np.argwhere(lossy).astype(np.int64).reshape(-1, 2))


# ------------------------------------------------------------------ the FP4 quantization rule


def quantize_fp4_v4(x: Any, *, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek-V4's FP4 rule: ``x [..., out, in]`` -> ``(packed int8 [..., out, in/2], scale
    bytes uint8 [..., out, in/32])``, bit-exact (see the module docstring).

    ``x``: float32, bfloat16 or float16 (numpy or torch), ``in`` a multiple of 32. Non-finite
    values raise :class:`~ue8m0.errors.NonFiniteError`.
    """
    from ue8m0.api import quantize
    from ue8m0.blocks import to_numpy

    arr = _check_fp4_input(to_numpy(x), name)
    q = quantize(arr, block=(1, GROUP), fmt=FLOAT4_E2M1FN, scale_rule="rceil", eps=AMAX_FLOOR)
    assert q.scale_codes is not None
    return pack_fp4(q.codes), q.scale_codes


def _check_fp4_input(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.shape[-1] % GROUP:
        raise InputError(
            f"{name}: shape {arr.shape}: the last dim must be a multiple of {GROUP} "
            "(one FP4 scale per 32 inputs)"
        )
    return arr


def _f32(v: float) -> float:
    """``v`` rounded to float32 (C's double -> float cast: to nearest even), a Python float."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", v))[0])
    except OverflowError:  # rounds to +-Inf
        return math.copysign(math.inf, v)


def _f32_fields(v: float) -> tuple[int, int]:
    """Exponent and mantissa fields of float32 ``v``."""
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    return (bits >> 23) & 0xFF, bits & 0x7FFFFF


def e2m1_nearest(y: float) -> int:
    """E2M1 code of float ``y``: saturate at +-6, nearest magnitude, ties to the even code,
    sign bit from ``y``'s sign (so -0.0 and small negatives give code 8). Scalar (oracle)."""
    mag = min(abs(y), 6.0)
    best = 0
    for k in range(1, 8):
        here, there = abs(mag - E2M1_MAGNITUDES[k]), abs(mag - E2M1_MAGNITUDES[best])
        if here < there or (here == there and k % 2 == 0):
            best = k
    return best | (8 if math.copysign(1.0, y) < 0 else 0)


def v4_scale_byte(amax: float) -> int:
    """The FP4 rule's scale byte of a group with largest magnitude ``amax`` (finite float32),
    step by step: floor, float32 product with fl32(1/6), exponent bits, ceiling. Scalar."""
    exp, mant = _f32_fields(_f32(max(amax, AMAX_FLOOR) * INV6))
    return exp + (1 if mant else 0)


def quantize_fp4_v4_oracle(x: Any, *, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_fp4_v4` one group at a time in Python, from kernel.py's steps (slow)."""
    from ue8m0.blocks import to_numpy

    arr = _check_fp4_input(to_numpy(x), name)
    rows = arr.astype(np.float32).reshape(-1, arr.shape[-1])
    codes = np.zeros(rows.shape, dtype=np.uint8)
    sbytes = np.zeros((rows.shape[0], rows.shape[1] // GROUP), dtype=np.uint8)
    for r in range(rows.shape[0]):
        for g in range(sbytes.shape[1]):
            group = [float(v) for v in rows[r, g * GROUP : (g + 1) * GROUP]]
            bad = [v for v in group if not math.isfinite(v)]
            if bad:
                raise NonFiniteError.in_block(bad[0], (r, g), sbytes.shape)
            e = v4_scale_byte(max(abs(v) for v in group)) - 127
            sbytes[r, g] = e + 127
            for k, v in enumerate(group):  # x / 2**e is exact in float64: round it once
                codes[r, g * GROUP + k] = e2m1_nearest(_f32(v / math.ldexp(1.0, e)))
    shape = arr.shape
    return pack_fp4(codes.reshape(shape)), sbytes.reshape(*shape[:-1], shape[-1] // GROUP)


# --------------------------------------------------------------- the FP4 -> FP8 cast


def _tile_grid(out: int, n_in: int) -> tuple[int, int]:
    return -(-out // TILE), -(-n_in // TILE)


def _cast_pair(packed: Any, scale: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    p, s = check_fp4_pair(packed, scale, name)
    if p.ndim != 2:
        raise InputError(f"{name}: the FP4 -> FP8 cast takes one [out, in/2] matrix, got {p.shape}")
    return p, s


def _nan_tile_error(name: str, s: np.ndarray) -> InputError:
    r, g = (int(i) for i in np.argwhere(s == UE8M0.nan_code)[0])
    return InputError(
        f"{name}: scale byte 0xFF (NaN) at row {r}, group {g} (tile {r // TILE}, "
        f"{g * GROUP // TILE}); pass nonfinite='propagate' to write that tile as NaN"
    )


#: DeepSeek's FP4_TABLE: the E2M1 values with code 8 read as +0.0
DEEPSEEK_FP4_TABLE = tuple([*E2M1_MAGNITUDES, 0.0, *(-m for m in E2M1_MAGNITUDES[1:])])
#: offsets below ``2**D_LOW`` give the same bytes as ``2**D_LOW`` (every product flushes to
#: +-0: ``6 * 2**-13 < 2**-10``, half e4m3's smallest subnormal)
D_LOW = -16


@functools.cache
def _byte_table() -> np.ndarray:
    """``[d - D_LOW, packed byte]`` -> the two e4m3 codes (low element in the low byte), uint16.

    Built with ue8m0's vectorised e4m3 encoder (:func:`ue8m0.reference.encode`) from the
    float32 products DeepSeek forms; the oracle uses a separate scalar encoder.
    """
    from ue8m0.reference import encode

    d = np.arange(D_LOW, MAX_OFFSET_BITS + 1)
    values = np.array(DEEPSEEK_FP4_TABLE, dtype=np.float32)
    products = values[None, :] * np.ldexp(np.float32(1.0), d)[:, None].astype(np.float32)
    e4m3 = encode(products.astype(np.float32), FLOAT8_E4M3FN).astype(np.uint16)  # [d, code]
    byte = np.arange(256)
    table = e4m3[:, byte & 0x0F] | (e4m3[:, byte >> 4] << np.uint16(8))
    return np.ascontiguousarray(table.astype("<u2"))


def cast_fp4_to_fp8_v4(
    packed: Any,
    scale: Any,
    *,
    nonfinite: str | NonFinite = "raise",
    name: str = "FP4 weight",
) -> Fp8Cast:
    """DeepSeek-V4's ``cast_e2m1fn_to_e4m3fn``, byte for byte, with a per-tile loss report.

    ``packed``: int8/uint8 ``[out, in/2]``; ``scale``: uint8 or float8_e8m0fnu ``[out, in/32]``.
    Returns :class:`Fp8Cast` ``(codes uint8 [out, in], tile scale bytes uint8
    [ceil(out/128), ceil(in/128)], LossyTiles)``. ``nonfinite``: what a 0xFF scale does (raise
    :class:`~ue8m0.errors.InputError`, or ``"propagate"``: a NaN tile as DeepSeek writes it).
    A compiled kernel, one tile per task; the loss check costs nothing on tiles whose group
    bytes span at most 14 binades (they are exact), such as every tile of the releases.
    """
    from ue8m0.kernels._fp4 import cast_fp4_to_fp8_kernel

    policy = NonFinite.parse(nonfinite)
    p, s = _cast_pair(packed, scale, name)
    if policy is NonFinite.RAISE and (s == UE8M0.nan_code).any():
        raise _nan_tile_error(name, s)
    out, n_in = p.shape[0], 2 * p.shape[1]
    tiles = _tile_grid(out, n_in)
    codes = np.empty((out, n_in), dtype=np.uint8)
    tile_bytes = np.empty(tiles, dtype=np.uint8)
    errors = np.empty(tiles, dtype=np.float64)
    cast_fp4_to_fp8_kernel(
        np.ascontiguousarray(p),
        np.ascontiguousarray(s),
        _byte_table(),
        D_LOW,
        decode_table(FLOAT8_E4M3FN).astype(np.float64),
        np.array(DEEPSEEK_FP4_TABLE, dtype=np.float64),
        MAX_OFFSET_BITS - EXACT_MIN_D,
        MAX_OFFSET_BITS,
        codes.view(np.uint16),
        tile_bytes,
        errors,
    )
    return Fp8Cast(codes, tile_bytes, LossyTiles.from_errors(errors))


def e4m3_nearest(y: float) -> int:
    """e4m3fn code of float ``y`` by search: nearest finite value, ties to the even code, the
    sign bit from ``y``'s sign, NaN -> 0x7F. Scalar (the oracle's encoder)."""
    if math.isnan(y):
        return E4M3_NAN
    table = decode_table(FLOAT8_E4M3FN)
    mag = abs(y)
    best = 0
    for c in range(1, 0x7F):
        here, there = abs(mag - float(table[c])), abs(mag - float(table[best]))
        if here < there or (here == there and c % 2 == 0):
            best = c
    return best | (0x80 if math.copysign(1.0, y) < 0 else 0)


@functools.cache
def _scaled_codes(offset: float) -> tuple[int, ...]:
    """e4m3 codes of ``fl32(value * offset)`` for DeepSeek's 16 table values (memoised)."""
    return tuple(e4m3_nearest(_f32(v * offset)) for v in DEEPSEEK_FP4_TABLE)


def _e8m0_of_f32(v: float) -> int:
    """torch's CPU float32 -> float8_e8m0fnu byte of a positive or NaN float32 ``v``."""
    if math.isnan(v):
        return UE8M0.nan_code
    exp, mant = _f32_fields(v)
    if exp == 0:
        return 1 if mant > 0x400000 else 0
    return min(exp + (1 if mant else 0), UE8M0.max_code)


def cast_fp4_to_fp8_v4_oracle(
    packed: Any,
    scale: Any,
    *,
    nonfinite: str | NonFinite = "raise",
    name: str = "FP4 weight",
) -> Fp8Cast:
    """:func:`cast_fp4_to_fp8_v4` tile by tile and element by element, following
    ``cast_e2m1fn_to_e4m3fn``'s float32 steps with Python floats (slow; the oracle)."""
    policy = NonFinite.parse(nonfinite)
    p, s = _cast_pair(packed, scale, name)
    out, n_in = p.shape[0], 2 * p.shape[1]
    tr, tc = _tile_grid(out, n_in)
    codes = np.zeros((out, n_in), dtype=np.uint8)
    tile_bytes = np.zeros((tr, tc), dtype=np.uint8)
    errors = np.zeros((tr, tc), dtype=np.float64)
    e4m3 = decode_table(FLOAT8_E4M3FN)
    for ti in range(tr):
        for tj in range(tc):
            rows = range(ti * TILE, min(out, (ti + 1) * TILE))
            groups = range(tj * TILE // GROUP, min(s.shape[1], (tj + 1) * TILE // GROUP))
            sg = {(r, g): UE8M0.decode(int(s[r, g])) for r in rows for g in groups}
            if any(math.isnan(v) for v in sg.values()):
                if policy is NonFinite.RAISE:
                    raise _nan_tile_error(name, s)
                tile_bytes[ti, tj] = UE8M0.nan_code
                codes[rows.start : rows.stop, groups.start * GROUP : groups.stop * GROUP] = 0x7F
                errors[ti, tj] = math.nan
                continue
            big = _f32(max(sg.values()) / 2**MAX_OFFSET_BITS)  # scale.amax() / 2**6, float32
            tile_bytes[ti, tj] = _e8m0_of_f32(big)
            stored = math.ldexp(1.0, int(tile_bytes[ti, tj]) - 127)
            worst = 0.0
            for (r, g), s_group in sg.items():
                offset = _f32(s_group / big)
                enc = _scaled_codes(offset)
                for j in range(g * GROUP, (g + 1) * GROUP):
                    byte = int(p[r, j // 2])
                    code = (byte >> 4) if j % 2 else (byte & 0x0F)
                    codes[r, j] = enc[code]
                    change = abs(
                        float(e4m3[enc[code]]) * stored - DEEPSEEK_FP4_TABLE[code] * s_group
                    )
                    worst = max(worst, change)
            errors[ti, tj] = worst
    return Fp8Cast(codes, tile_bytes, LossyTiles.from_errors(errors))
