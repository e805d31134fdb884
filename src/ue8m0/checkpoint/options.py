"""The typed options of each converting command: frozen, validated once, carried by the plan to
the workers as they are, and recorded in the manifest (every field changes the output bytes)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ue8m0.blocks import parse_block
from ue8m0.checkpoint.registry import (
    DEEPSEEK,
    FMTS,
    Layout,
    get_layout,
)
from ue8m0.checkpoint.scales import SCALE_DTYPES
from ue8m0.errors import OptionError
from ue8m0.policies import DEFAULT_EPS, NonFinite, ScaleRule, ScaleSearch

#: ``dtype`` option of ``dequantize`` -> safetensors tag
DEQUANT_DTYPES = {"bf16": "BF16", "f32": "F32"}
#: ``experts`` option of layouts with FP4 routed experts (DeepSeek-V4's ``expert_dtype``)
EXPERT_DTYPES = ("fp4", "fp8")
#: ``scales`` option of ``relayout``: each group's canonical scale, or the source byte repeated
RELAYOUT_SCALES = ("canonical", "repeat")


def _check_eps(eps: float) -> float:
    if not np.isfinite(eps) or eps < 0:
        raise OptionError("eps", f"must be finite and >= 0, got {eps}")
    return float(eps)


def _search(value: str | None, rule: ScaleRule) -> str | None:
    search = ScaleSearch.parse(value)
    if search is not ScaleSearch.NONE and not rule.is_power_of_two:
        raise OptionError("scale_search", "mse needs a power-of-two scale_rule")
    return None if search is ScaleSearch.NONE else search.value


@dataclass(frozen=True)
class QuantizeOptions:
    """Parameters of ``ue8m0 quantize``."""

    #: the conversion writes per-tensor error stats beside its shards
    writes_stats: ClassVar[bool] = False

    fmt: str = "e4m3"
    block: tuple[int, int] | None = None  # None: the layout's block
    scale_rule: str = "rceil"
    scale_dtype: str | None = None  # None: the layout's default
    eps: float = DEFAULT_EPS
    nonfinite: str = "raise"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pad_partial: bool = False
    layout: str = DEEPSEEK.name
    scale_search: str | None = None
    #: routed experts of a layout that holds FP4 experts: ``fp4`` (its FP4 rule) or ``fp8``
    #: (None: fp4 there; not applicable elsewhere)
    experts: str | None = None
    #: the output is not for vLLM/SGLang: allow what their loaders misread
    not_for_serving: bool = False

    @property
    def out_layout(self) -> Layout:
        return get_layout(self.layout)

    def validated(self) -> QuantizeOptions:
        """These options with defaults resolved and names canonical; an :class:`OptionError`
        for anything the layout cannot store or that conflicts."""
        layout = get_layout(self.layout)
        if self.fmt not in FMTS:
            raise OptionError("fmt", f"unknown format {self.fmt!r}; known: {', '.join(FMTS)}")
        block = parse_block(self.block if self.block is not None else layout.block)
        if block[0] < 1 or block[1] < 1:
            raise OptionError("block", "checkpoint blocks need explicit sizes, not -1")
        rule = ScaleRule.parse(self.scale_rule)
        scale_dtype = self.scale_dtype or layout.default_scale_dtype
        layout.check(self.fmt, scale_dtype, block, rule.is_power_of_two, not self.not_for_serving)
        if scale_dtype != "f32" and not rule.is_power_of_two:
            raise OptionError("scale_dtype", "e8m0/u8 scales need a power-of-two scale_rule")
        for regex in (*self.include, *self.exclude):
            try:
                re.compile(regex)
            except re.error as exc:
                raise OptionError("include/exclude", f"bad regex {regex!r}: {exc}") from None
        experts = self.experts
        if layout.fp4_experts is None and experts is not None:
            raise OptionError("experts", f"{layout.title} has no FP4 experts to choose for")
        if layout.fp4_experts is not None:
            experts = experts or EXPERT_DTYPES[0]
            if experts not in EXPERT_DTYPES:
                raise OptionError(
                    "experts", f"unknown {experts!r}; known: {', '.join(EXPERT_DTYPES)}"
                )
        return replace(
            self,
            block=block,
            scale_rule=rule.value,
            scale_dtype=scale_dtype,
            eps=_check_eps(self.eps),
            nonfinite=NonFinite.parse(self.nonfinite).value,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            scale_search=_search(self.scale_search, rule),
            experts=experts,
        )

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        out["block"] = list(self.block) if self.block is not None else None
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return out

    def quantize_kwargs(self) -> dict[str, Any]:
        """The ``ue8m0.quantize`` keywords these options fix (the rule, not the block)."""
        return {
            "scale_rule": self.scale_rule,
            "eps": self.eps,
            "nonfinite": self.nonfinite,
            "scale_search": self.scale_search,
        }


@dataclass(frozen=True)
class DequantizeOptions:
    """Parameters of ``ue8m0 dequantize``."""

    writes_stats: ClassVar[bool] = False

    dtype: str = "bf16"

    def validated(self) -> DequantizeOptions:
        if self.dtype not in DEQUANT_DTYPES:
            raise OptionError(
                "dtype", f"unknown {self.dtype!r}; known: {', '.join(DEQUANT_DTYPES)}"
            )
        return self

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fp8Options:
    """Parameters of ``requantize`` (to the ``deepseek`` or ``compressed-tensors`` layout) and
    ``relayout`` (to ``mxfp8``)."""

    writes_stats: ClassVar[bool] = True

    layout: str = DEEPSEEK.name
    scale_rule: str = "rceil"
    scale_dtype: str = "auto"
    eps: float = DEFAULT_EPS
    nonfinite: str = "raise"
    scale_search: str | None = None
    scales: str = "canonical"
    #: the output is not for vLLM/SGLang: allow what their loaders misread
    not_for_serving: bool = False

    @property
    def out_layout(self) -> Layout:
        return get_layout(self.layout)

    def validated(self) -> Fp8Options:
        rule = ScaleRule.parse(self.scale_rule)
        if not rule.is_power_of_two:
            raise OptionError("scale_rule", "requantize needs a power-of-two rule")
        if self.scale_dtype != "auto" and self.scale_dtype not in SCALE_DTYPES:
            raise OptionError("scale_dtype", f"unknown {self.scale_dtype!r}")
        if self.scales not in RELAYOUT_SCALES:
            raise OptionError("scales", f"unknown {self.scales!r}")
        layout = get_layout(self.layout)
        layout.check(
            "e4m3", self.resolved_scale_dtype(None), layout.block, True, not self.not_for_serving
        )
        return replace(
            self,
            scale_rule=rule.value,
            eps=_check_eps(self.eps),
            nonfinite=NonFinite.parse(self.nonfinite).value,
            scale_search=_search(self.scale_search, rule),
        )

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def out_block(self, source_block: tuple[int, int]) -> tuple[int, int]:
        """The output block of a weight whose source block is ``source_block``: the layout's
        fixed block (MXFP8 1x32), else the source's."""
        layout = self.out_layout
        return layout.block if layout.fixed_block else source_block

    def resolved_scale_dtype(self, source_tag: str | None) -> str:
        """``scale_dtype`` for one tensor: ``auto`` keeps the source's scale dtype when the
        layout keeps source dtypes, can store it (F32, U8, F8_E8M0) and its serving loaders
        read it; a misread U8 source becomes F8_E8M0 (the same bytes); else the layout's
        default."""
        if self.scale_dtype != "auto":
            return self.scale_dtype
        layout = self.out_layout
        by_tag = {tag: name for name, tag in SCALE_DTYPES.items()}
        kept = by_tag.get(source_tag or "")
        servable = self.not_for_serving or layout.misread("scale_dtype", kept or "") is None
        if layout.keeps_source_scale_dtype and kept in layout.scale_dtypes and servable:
            return kept
        if kept == "u8" and "e8m0" in layout.scale_dtypes:
            return "e8m0"  # the same bytes, as a dtype loaders read as powers of two
        return layout.default_scale_dtype


@dataclass(frozen=True)
class Fp4RepackOptions:
    """Parameters of ``relayout --to fp8``: DeepSeek-V4's packed FP4 routed experts repacked to
    FP8 E4M3 with 128x128 F8_E8M0 scales, byte for byte as DeepSeek's own cast; ``strict``
    refuses any tile whose values would change."""

    writes_stats: ClassVar[bool] = True

    strict: bool = False

    def validated(self) -> Fp4RepackOptions:
        return self

    def params(self) -> dict[str, Any]:
        return {"to": "fp8", **asdict(self)}


#: the options of any converting command, as a plan carries them
Options = QuantizeOptions | DequantizeOptions | Fp8Options | Fp4RepackOptions
