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
from ue8m0.policies import ScaleRule


@dataclass(frozen=True)
class Recipe:
    """How to quantize one tensor: ``quantize(x, block, fmt, scale_rule, eps)``."""

    name: str
    fmt: ElementFormat
    block: tuple[int, int]
    scale_rule: ScaleRule
    eps: float = DEFAULT_EPS

    @property
    def label(self) -> str:
        """Human-readable description, e.g. ``e4m3 128x128 rceil``."""
        short = self.fmt.aliases[0] if self.fmt.aliases else self.fmt.name
        rows = "N" if self.block[0] == -1 else str(self.block[0])
        cols = "N" if self.block[1] == -1 else str(self.block[1])
        return f"{short} {rows}x{cols} {self.scale_rule.value}"

    def quantize(self, x: object) -> QuantizedTensor:
        """Quantize ``x`` with this recipe."""
        return quantize(x, self.block, self.fmt, self.scale_rule, self.eps)

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
    ) -> Recipe:
        """Build a recipe from names (validated)."""
        return cls(name, element_format(fmt), parse_block(block), ScaleRule.parse(scale_rule), eps)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe.make("rceil", "e4m3", (128, 128), "rceil"),
        Recipe.make("fp32", "e4m3", (128, 128), "fp32"),
        Recipe.make("floor", "e4m3", (128, 128), "floor"),
        Recipe.make("mxfp8", "e4m3", (1, 32), "rceil"),
        Recipe.make("e5m2", "e5m2", (128, 128), "rceil"),
        Recipe.make("mxfp4", "e2m1", (1, 32), "rceil"),
    )
}

#: the recipes reports compare by default
DEFAULT_RECIPES: tuple[str, ...] = tuple(RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """A named recipe, or one spelled ``FMT:RxC:RULE`` (e.g. ``e4m3:1x128:log2``)."""
    if isinstance(name, Recipe):
        return name
    key = name.strip().lower()
    if key in RECIPES:
        return RECIPES[key]
    parts = key.split(":")
    if len(parts) == 3:
        return Recipe.make(key, parts[0], parts[1], parts[2])
    raise FormatNameError(
        f"unknown recipe {name!r}; known: {', '.join(RECIPES)} or FMT:RxC:RULE (e4m3:1x128:rceil)"
    )
