"""The accelerator database: one frozen :class:`Chip` per accelerator, every number sourced.

The shipped database is ``plan/data/chips.toml`` (its header documents units and fields); users
add or override chips with a TOML or JSON file of the same schema (``--chips FILE``). Numbers
nobody publishes are ``None``; the estimator then says what it cannot estimate.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ue8m0.plan.errors import PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Fp8Math(enum.Enum):
    """FP8 matrix math in hardware.

    - ``OCP``: E4M3FN/E5M2 tensor math; e4m3fn checkpoints run as they are.
    - ``FNUZ``: only AMD's FNUZ variants (bias 8, no −0): weights are converted at load
      (``e4m3fn → e4m3fnuz`` halves every value's code scale; exact except at ±448).
    - ``YES``: FP8 math whose encoding is not published.
    - ``NONE``: no FP8 math; FP8 weights are dequantized in the kernel (weight-only).
    - ``UNKNOWN``: disputed; planned as ``NONE``.
    """

    OCP = "ocp"
    FNUZ = "fnuz"
    YES = "yes"
    NONE = "none"
    UNKNOWN = "unknown"

    @property
    def native(self) -> bool:
        """Whether FP8 GEMMs run on FP8 tensor math."""
        return self in (Fp8Math.OCP, Fp8Math.FNUZ, Fp8Math.YES)


class BlockScaleMath(enum.Enum):
    """Whether the MMA instruction consumes per-block power-of-two (E8M0 = UE8M0) scales.

    - ``MX``: yes (OCP MX, 1 scale per 32 K-elements; a 128-block UE8M0 scale is replicated 4×).
    - ``NONE``: scales applied in software (FP32 promotion every K-block, DeepGEMM-style).
    - ``UNKNOWN``: not published.
    """

    MX = "mx"
    NONE = "none"
    UNKNOWN = "unknown"


class Confidence(enum.Enum):
    """How far a number can be trusted (see the database header)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    NONE = "none"


@dataclass(frozen=True)
class Sourced:
    """One value with where it comes from (source keys; text in parentheses is a comment)."""

    value: Any
    src: str
    conf: Confidence

    @property
    def source_keys(self) -> tuple[str, ...]:
        """The source keys named by :attr:`src`, parenthesised comments removed."""
        bare = re.sub(r"\([^)]*\)", "", self.src)
        return tuple(k.strip() for k in bare.split(";") if k.strip())


#: numeric fields of a chip: name -> (unit, description)
NUMBERS: dict[str, tuple[str, str]] = {
    "bf16_tflops": ("TFLOPS", "dense BF16 tensor peak"),
    "fp8_tflops": ("TFLOPS", "dense FP8 tensor peak"),
    "int8_tops": ("TOPS", "dense INT8 tensor peak"),
    "fp4_tflops": ("TFLOPS", "dense FP4 (MXFP4) tensor peak"),
    "mem_gb": ("GB", "device memory"),
    "mem_bw_tbs": ("TB/s", "memory bandwidth"),
    "scaleup_gbs": ("GB/s", "scale-up bandwidth, aggregate bidirectional"),
    "tdp_w": ("W", "board power"),
}


@dataclass(frozen=True)
class Chip:
    """One accelerator. Numbers are :class:`Sourced` or ``None`` (not published)."""

    key: str
    name: str
    vendor: str
    fp8_math: Sourced
    block_scale_math: Sourced
    bf16_tflops: Sourced | None = None
    fp8_tflops: Sourced | None = None
    int8_tops: Sourced | None = None
    fp4_tflops: Sourced | None = None
    mem_gb: Sourced | None = None
    mem_bw_tbs: Sourced | None = None
    scaleup_gbs: Sourced | None = None
    tdp_w: Sourced | None = None
    aliases: tuple[str, ...] = ()
    arch: str = ""
    form_factor: str = ""
    year: str = ""
    confidence: str = ""
    scaleup_tech: str = ""
    scaleup_domain: int | None = None
    notes: str = ""
    origin: str = field(default="builtin", compare=False)

    def number(self, name: str) -> float | None:
        """The value of numeric field ``name`` (see :data:`NUMBERS`), or None when unknown."""
        sourced = getattr(self, name)
        return None if sourced is None else float(sourced.value)

    @property
    def fp8(self) -> Fp8Math:
        """FP8 math support."""
        return Fp8Math(self.fp8_math.value)

    @property
    def block_scale(self) -> BlockScaleMath:
        """Block-scale (MX / UE8M0) math support."""
        return BlockScaleMath(self.block_scale_math.value)

    @property
    def capability_class(self) -> str:
        """A: FP8 + MX MMA; B: FP8, scales in software; C: FP8 FNUZ only; D: no FP8 math."""
        if not self.fp8.native:
            return "D"
        if self.fp8 is Fp8Math.FNUZ:
            return "C"
        return "A" if self.block_scale is BlockScaleMath.MX else "B"

    def ridge(self, peak_field: str) -> float | None:
        """Ridge point ``peak / bandwidth`` in FLOP per byte, or None when either is unknown."""
        peak, bw = self.number(peak_field), self.number("mem_bw_tbs")
        return None if peak is None or bw is None else peak / bw

    def sourced_fields(self) -> dict[str, Sourced]:
        """Every sourced field that has a value."""
        names = ("fp8_math", "block_scale_math", *NUMBERS)
        return {n: s for n in names if (s := getattr(self, n)) is not None}


def _sourced(raw: Any, where: str) -> Sourced:
    if not isinstance(raw, dict) or "value" not in raw:
        raise PlanError(f"{where}: expected a table {{value, src, conf}}")
    if not str(raw.get("src", "")).strip():
        raise PlanError(f"{where}: every number needs a source (src)")
    try:
        conf = Confidence(str(raw.get("conf", "none")).lower())
    except ValueError:
        raise PlanError(f"{where}: conf must be high, medium, low or none") from None
    return Sourced(raw["value"], str(raw["src"]), conf)


def chip_from_dict(raw: dict[str, Any], origin: str = "builtin") -> Chip:
    """Build and validate a :class:`Chip` from one ``[[chip]]`` table."""
    key = str(raw.get("key", "")).strip().lower()
    if not key:
        raise PlanError(f"{origin}: a chip needs a key")
    where = f"{origin}: chip {key!r}"
    kwargs: dict[str, Any] = {"key": key, "origin": origin}
    for name in (
        "name",
        "vendor",
        "arch",
        "form_factor",
        "year",
        "confidence",
        "scaleup_tech",
        "notes",
    ):
        kwargs[name] = str(raw.get(name, key if name == "name" else ""))
    kwargs["aliases"] = tuple(str(a).lower() for a in raw.get("aliases", ()))
    if raw.get("scaleup_domain") is not None:
        kwargs["scaleup_domain"] = int(raw["scaleup_domain"])
    for name, enum_cls in (("fp8_math", Fp8Math), ("block_scale_math", BlockScaleMath)):
        if name not in raw:
            raise PlanError(f'{where}: {name} is required (use value = "unknown" if unknown)')
        sourced = _sourced(raw[name], f"{where}.{name}")
        try:
            enum_cls(sourced.value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum_cls)
            raise PlanError(f"{where}.{name}: {sourced.value!r} is not one of {allowed}") from None
        kwargs[name] = sourced
    for name in NUMBERS:
        if name in raw:
            sourced = _sourced(raw[name], f"{where}.{name}")
            if not isinstance(sourced.value, (int, float)) or sourced.value <= 0:
                raise PlanError(f"{where}.{name}: value must be a positive number")
            kwargs[name] = sourced
    unknown = set(raw) - {*kwargs, "key", "aliases", "scaleup_domain"}
    if unknown:
        raise PlanError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(NUMBERS)}")
    return Chip(**kwargs)


@dataclass(frozen=True)
class ChipDB:
    """Chips by key, with their aliases and the source table."""

    chips: tuple[Chip, ...]
    sources: dict[str, str]

    def get(self, name: str) -> Chip:
        """A chip by case-insensitive key or alias (``h20``, ``H100``, ``910c``)."""
        wanted = name.strip().lower()
        for chip in self.chips:
            if wanted == chip.key or wanted in chip.aliases:
                return chip
        known = ", ".join(c.key for c in self.chips)
        raise PlanError(f"unknown chip {name!r}; known chips: {known}")

    def select(self, names: Iterable[str]) -> list[Chip]:
        """Chips by name; ``all`` means every chip."""
        out: list[Chip] = []
        for name in names:
            for part in name.split(","):
                if part.strip().lower() == "all":
                    out.extend(self.chips)
                elif part.strip():
                    out.append(self.get(part))
        return list(dict.fromkeys(out))

    def merged(self, other: ChipDB) -> ChipDB:
        """This database with ``other``'s chips added; a chip with the same key is replaced."""
        keys = {c.key for c in other.chips}
        chips = tuple(c for c in self.chips if c.key not in keys) + other.chips
        return ChipDB(chips, {**self.sources, **other.sources})


def _parse(text: str, origin: str) -> dict[str, Any]:
    try:
        if origin.endswith(".json"):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(f"{origin}: cannot parse ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("chip"), list):
        raise PlanError(f"{origin}: expected a list of chips under 'chip' ([[chip]] in TOML)")
    return data


def parse_db(text: str, origin: str) -> ChipDB:
    """A :class:`ChipDB` from TOML (or JSON when ``origin`` ends in ``.json``) text."""
    data = _parse(text, origin)
    chips = tuple(chip_from_dict(raw, origin) for raw in data["chip"])
    return ChipDB(chips, {str(k): str(v) for k, v in data.get("sources", {}).items()})


def builtin_db() -> ChipDB:
    """The shipped database."""
    text = (resources.files("ue8m0.plan") / "data" / "chips.toml").read_text("utf-8")
    return parse_db(text, "chips.toml")


def load_db(extra: Iterable[str | Path] = ()) -> ChipDB:
    """The shipped database plus the chips of each file in ``extra`` (which win on key clashes)."""
    db = builtin_db()
    for path in extra:
        p = Path(path)
        db = db.merged(parse_db(p.read_text("utf-8"), str(p)))
    return db
