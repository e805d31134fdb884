"""Named quantization recipes: an element format, a block and a scale rule, under one name.

Recipes are what the report, eval and torch layers take (``--recipe mxfp8``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ue8m0.api import DEFAULT_EPS, QuantizedTensor, dequantize, quantize
from ue8m0.blocks import BlockLike, parse_block
from ue8m0.errors import FormatNameError
from ue8m0.formats import ElementFormat, element_format
from ue8m0.policies import ScaleRule, ScaleSearch


@dataclass(frozen=True)
class Recipe:
    """How to quantize one tensor: ``quantize(x, block, fmt, scale_rule, eps, scale_search=…)``."""

    name: str
    fmt: ElementFormat
    block: tuple[int, int]
    scale_rule: ScaleRule
    eps: float = DEFAULT_EPS
    scale_search: ScaleSearch = ScaleSearch.NONE

    @property
    def label(self) -> str:
        """Human-readable description, e.g. ``e4m3 128x128 rceil``."""
        short = self.fmt.aliases[0] if self.fmt.aliases else self.fmt.name
        rows = "N" if self.block[0] == -1 else str(self.block[0])
        cols = "N" if self.block[1] == -1 else str(self.block[1])
        search = "" if self.scale_search is ScaleSearch.NONE else f"+{self.scale_search.value}"
        return f"{short} {rows}x{cols} {self.scale_rule.value}{search}"

    def quantize(self, x: object) -> QuantizedTensor:
        """Quantize ``x`` with this recipe."""
        return quantize(
            x, self.block, self.fmt, self.scale_rule, self.eps, scale_search=self.scale_search
        )

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """``dequantize(quantize(x))`` as float32."""
        return dequantize(self.quantize(x))

    @classmethod
    def make(
        cls,
        name: str,
        fmt: str | ElementFormat = "e4m3",
        block: BlockLike = (128, 128),
        scale_rule: str | ScaleRule = "rceil",
        eps: float = DEFAULT_EPS,
        scale_search: str | ScaleSearch | None = None,
    ) -> Recipe:
        """Build a recipe from names (validated)."""
        rule = ScaleRule.parse(scale_rule)
        search = ScaleSearch.parse(scale_search)
        if search is not ScaleSearch.NONE and not rule.is_power_of_two:
            raise FormatNameError(f"recipe {name!r}: scale search needs a power-of-two rule")
        return cls(name, element_format(fmt), parse_block(block), rule, eps, search)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe.make("rceil", "e4m3", (128, 128), "rceil"),
        Recipe.make("fp32", "e4m3", (128, 128), "fp32"),
        Recipe.make("floor", "e4m3", (128, 128), "floor"),
        Recipe.make("mxfp8", "e4m3", (1, 32), "rceil"),
        Recipe.make("e5m2", "e5m2", (128, 128), "rceil"),
        Recipe.make("mxfp4", "e2m1", (1, 32), "rceil"),
        Recipe.make("rceil-mse", "e4m3", (128, 128), "rceil", scale_search="mse"),
        Recipe.make("mxfp4-mse", "e2m1", (1, 32), "rceil", scale_search="mse"),
    )
}

#: the recipes ``ue8m0 report`` and ``ue8m0 eval`` compare by default: all of the above (six
#: scale and element-format choices, and the MSE scale search on the e4m3 and FP4 ones)
DEFAULT_RECIPES: tuple[str, ...] = tuple(RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """A named recipe, or one spelled ``FMT:RxC:RULE[:SEARCH]`` (``e4m3:1x128:log2``,
    ``e2m1:1x32:rceil:mse``)."""
    if isinstance(name, Recipe):
        return name
    key = name.strip().lower()
    if key in RECIPES:
        return RECIPES[key]
    parts = key.split(":")
    if len(parts) in (3, 4):
        search = parts[3] if len(parts) == 4 else None
        return Recipe.make(key, parts[0], parts[1], parts[2], scale_search=search)
    raise FormatNameError(
        f"unknown recipe {name!r}; known: {', '.join(RECIPES)} or FMT:RxC:RULE[:mse] (e4m3:1x128:rceil)"
    )
