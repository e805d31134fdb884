"""Named recipes and the FMT:RxC:RULE[:SEARCH] spelling."""

from __future__ import annotations

import numpy as np
import pytest

import ue8m0
from ue8m0.recipes import RECIPES, get_recipe


def test_named_recipes_quantize_like_the_api() -> None:
    x = np.random.default_rng(3).standard_normal((130, 200)).astype(np.float32)
    for recipe in RECIPES.values():
        q = recipe.quantize(x)
        ref = ue8m0.quantize(
            x,
            recipe.block,
            recipe.fmt,
            recipe.scale_rule,
            recipe.eps,
            scale_search=recipe.scale_search,
        )
        assert np.array_equal(q.codes, ref.codes), recipe.name
        assert np.array_equal(recipe.fake_quantize(x), ue8m0.dequantize(ref)), recipe.name


def test_spelled_recipe() -> None:
    r = get_recipe("e2m1:1x32:rceil:mse")
    assert r.label == "e2m1 1x32 rceil+mse"
    assert get_recipe("E4M3:128x128:FP32").scale_rule is ue8m0.ScaleRule.FP32
    with pytest.raises(ue8m0.FormatNameError, match="power-of-two"):
        get_recipe("e4m3:1x128:fp32:mse")
    with pytest.raises(ue8m0.FormatNameError, match="unknown recipe"):
        get_recipe("nvfp4")
