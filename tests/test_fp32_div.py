"""The ``fp32-div`` scale rule: float32 scales with elements ``x / s`` as
DeepSeek's ``act_quant`` computes them, beside ``fp32``'s ``x * fl32(1/s)`` (DeepGEMM)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ue8m0
from ckpt_fixtures import run_cli, synthetic_tensors, write_checkpoint
from ue8m0.formats import FLOAT8_E4M3FN


def _by_hand(x: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """e4m3 codes of ``x / s`` per block, ``s = max(amax, 1e-4) / 448`` in float32, computed
    here with numpy's float32 division and ml_dtypes' cast (values stay within +-448)."""
    br, bc = block
    out = np.empty(x.shape, np.uint8)
    for i in range(0, x.shape[0], br):
        for j in range(0, x.shape[1], bc):
            b = x[i : i + br, j : j + bc].astype(np.float32)
            s = np.float32(max(np.float32(np.abs(b).max()), np.float32(1e-4)) / np.float32(448))
            y = np.clip(b / s, -448, 448).astype(np.float32)
            out[i : i + br, j : j + bc] = y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return out


def test_divide_is_not_multiply_by_the_reciprocal() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 1024)).astype(np.float32)
    div = ue8m0.quantize(x, (1, 128), "e4m3", "fp32-div")
    mul = ue8m0.quantize(x, (1, 128), "e4m3", "fp32")
    np.testing.assert_array_equal(div.scale, mul.scale)
    differ = int(np.count_nonzero(div.codes != mul.codes))
    assert 0 < differ < x.size // 1000  # a few hundred of a million (273 measured upstream)
    np.testing.assert_array_equal(div.codes, _by_hand(x, (1, 128)))
    assert div.scale_codes is None and not ue8m0.ScaleRule.FP32_DIV.is_power_of_two


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    block=st.sampled_from([(1, 128), (128, 128), (1, 32), (32, 32)]),
    fmt=st.sampled_from(["e4m3", "e5m2", "e2m1"]),
    eps=st.sampled_from([1e-4, 0.0]),
)
def test_fast_path_equals_the_oracle(
    seed: int, rows: int, cols: int, block: tuple[int, int], fmt: str, eps: float
) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-6, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0  # zero blocks too (a zero scale with eps 0)
    fast = ue8m0.quantize(x, block, fmt, "fp32-div", eps, backend="fast")
    ref = ue8m0.quantize(x, block, fmt, "fp32-div", eps, backend="reference")
    np.testing.assert_array_equal(fast.codes, ref.codes)
    np.testing.assert_array_equal(fast.scale.view(np.uint32), ref.scale.view(np.uint32))


def test_an_all_zero_block_with_eps_zero_gives_zero_codes() -> None:
    x = np.zeros((4, 128), np.float32)
    x[0, 0] = -0.0
    q = ue8m0.quantize(x, (1, 128), FLOAT8_E4M3FN, "fp32-div", 0.0)
    assert (q.scale == 0).all() and not (q.codes & 0x7F).any()


def test_a_checkpoint_quantized_with_fp32_div(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, _, err = run_cli(
        ["quantize", src, tmp_path / "q", "-q", "--scale-rule", "fp32-div"], capsys
    )
    assert code == 0, err
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "scale_fmt" not in qc
    assert run_cli(["verify", tmp_path / "q", "--against", src, "-q"], capsys)[0] == 0
    code, _, err = run_cli(
        ["quantize", src, tmp_path / "e", "--scale-rule", "fp32-div", "--scale-dtype", "e8m0"],
        capsys,
    )
    assert code == 2 and "power-of-two" in err
