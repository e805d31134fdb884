"""Fast kernels vs the oracle on named edge cases, random shapes, non-finite input and threads."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels_helpers import assert_same_dequantize, assert_same_quantize, oracle_quantize
from ue8m0 import kernels
from ue8m0.errors import InputError, NonFiniteError
from ue8m0.formats import ELEMENT_FORMATS, FLOAT8_E4M3FN, ElementFormat
from ue8m0.policies import NonFinite, ScaleRule

FORMATS = pytest.mark.parametrize("fmt", ELEMENT_FORMATS, ids=lambda f: f.name)
RULES = pytest.mark.parametrize("rule", list(ScaleRule), ids=lambda r: r.value)
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]

#: float32 bit patterns: zeros, subnormals, the smallest/largest normals, element-format
#: boundaries and ties (448, 464, 480, 57344, 61440, 6, 7.5, 28, 30), rounding ties and
#: near-ties of the ratio amax / max, and 2**k * (1 + tiny) (vector V08, rceil vs log2)
# fmt: off
F32_EDGES = np.array(
    [
        0x00000000, 0x80000000, 0x00000001, 0x00400000, 0x00400001, 0x007FFFFF, 0x00800000,
        0x00800001, 0x3F800000, 0x3F800001, 0x3FDFFFFF, 0x3FE00000, 0x3FE00001, 0x43E00000,
        0x43E80000, 0x43F00000, 0x43F00001, 0x47600000, 0x47700000, 0x47700001, 0x40C00000,
        0x40F00000, 0x41E00000, 0x41F00000, 0x7F7FFFFF, 0x7F000000, 0x3B124925, 0x3B124924,
        0x38D1B717, 0x2EDBE6FF, 0x3C000000, 0x3BFFFFFF, 0x3FE00001, 0x3FE0000F, 0x3A800000,
        0x3A800001, 0x4B000001, 0x4B7FFFFF, 0x33800000, 0x337FFFFF, 0x33C00000, 0x34000001,
    ],
    dtype=np.uint32,
)
# fmt: on


def _edges() -> np.ndarray:
    signed = np.concatenate([F32_EDGES, F32_EDGES | np.uint32(0x80000000)])
    return signed.view(np.float32)


@FORMATS
@RULES
@pytest.mark.parametrize("eps", [0.0, 1e-4, 1e-10])
def test_float32_edge_values(fmt: ElementFormat, rule: ScaleRule, eps: float) -> None:
    e = _edges()
    assert_same_quantize(e.reshape(-1, 1), (1, 1), fmt, rule, eps)  # each its own amax
    half, quarter = np.float32(0.5), np.float32(0.25)
    mixed = np.stack([e, np.roll(e, 1), np.roll(e, 5) * half, np.roll(e, 11) * quarter], axis=1)
    assert_same_quantize(mixed, (1, 2), fmt, rule, eps)  # edges meet each other's scales
    assert_same_quantize(mixed, (1, 4), fmt, rule, eps)


@FORMATS
@RULES
def test_random_float32_bits(fmt: ElementFormat, rule: ScaleRule) -> None:
    bits = np.random.default_rng(7).integers(0, 1 << 32, (96, 96), dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    x = np.where(np.isfinite(x), x, np.float32(1.5)).astype(np.float32)
    assert_same_quantize(x, (1, 1), fmt, rule, 0.0)
    assert_same_quantize(x, (8, 12), fmt, rule, 1e-4)
    assert_same_quantize(x, (1, 32), fmt, rule, 1e-4)  # the 32-lane amax of float32 bits
    x[5, 40] = np.inf  # a non-finite block among 32-wide ones
    x[9, 3] = np.nan
    assert_same_quantize(x, (1, 32), fmt, rule, 1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("fmt", [ELEMENT_FORMATS[0], ELEMENT_FORMATS[3], ELEMENT_FORMATS[6]])
def test_nonfinite_propagate(dtype: type, fmt: ElementFormat) -> None:
    x = np.random.default_rng(1).standard_normal((2, 70, 90)).astype(np.float32)
    x[0, 3, 5], x[1, 69, 89], x[1, 40, 2] = np.nan, np.inf, -np.inf
    x = x.astype(dtype)
    for rule in ScaleRule:
        got = assert_same_quantize(x, (32, 32), fmt, rule, 1e-4, NonFinite.PROPAGATE)
        assert np.isnan(got[1]).sum() == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    ("where", "value"), [((0, 3, 5), np.nan), ((1, 69, 89), -np.inf), ((1, 0, 31), np.inf)]
)
def test_nonfinite_raise_names_the_same_block_and_value(
    dtype: type, where: tuple[int, int, int], value: float
) -> None:
    x = np.random.default_rng(2).standard_normal((2, 70, 90)).astype(np.float32)
    x[where] = value
    x[1, 69, 0] = -np.inf  # later in C order of the grid than every `where` above but one
    x = x.astype(dtype)
    with pytest.raises(NonFiniteError) as want:
        oracle_quantize(x, (32, 32), FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4, NonFinite.RAISE)
    with pytest.raises(NonFiniteError) as got:
        kernels.quantize(x, (32, 32), FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4, NonFinite.RAISE)
    assert str(got.value) == str(want.value)
    assert got.value.block == want.value.block
    assert str(got.value.value) == str(want.value.value)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_zero_blocks_and_signed_zeros(dtype: type, eps: float) -> None:
    x = np.zeros((40, 70), dtype=np.float32)
    x[::3] = -0.0
    x[20:, 40:] = np.random.default_rng(4).standard_normal((20, 30))
    for fmt in ELEMENT_FORMATS:
        for rule in ScaleRule:
            assert_same_quantize(x.astype(dtype), (16, 16), fmt, rule, eps)


BLOCKS = [(128, 128), (1, 128), (1, 32), (-1, -1), (1, -1), (-1, 128), (3, 5), (7, 1), (200, 3)]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_partial_blocks_and_batches(block: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(5)
    for shape in [(130, 257), (3, 67, 129), (2, 2, 9, 33)]:
        x: np.ndarray = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 4, shape)).astype(
            dtype
        )
        for fmt in (ELEMENT_FORMATS[0], ELEMENT_FORMATS[1], ELEMENT_FORMATS[6]):
            q = assert_same_quantize(x, block, fmt, ScaleRule.RCEIL, 1e-4)
            for out in (np.float32, ml_dtypes.bfloat16):
                assert_same_dequantize(q[0], q[1], block, fmt, out)


def test_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(6)
    base = rng.standard_normal((300, 200)).astype(ml_dtypes.bfloat16)
    for x in (base.T, base[::2, 1::3], rng.standard_normal((4, 50, 60)).astype(np.float32)[::2]):
        assert not x.flags.c_contiguous
        assert_same_quantize(x, (32, 32), FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 70),
    batch=st.integers(0, 3),
    br=st.sampled_from([-1, 1, 2, 5, 16, 128]),
    bc=st.sampled_from([-1, 1, 3, 32, 128]),
    fmt=st.sampled_from(ELEMENT_FORMATS),
    rule=st.sampled_from(list(ScaleRule)),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
    log_range=st.integers(0, 12),
    eps=st.sampled_from([0.0, 1e-4, 1e-10]),
)
def test_random_tensors(
    rows: int,
    cols: int,
    batch: int,
    br: int,
    bc: int,
    fmt: ElementFormat,
    rule: ScaleRule,
    dtype: type,
    seed: int,
    log_range: int,
    eps: float,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (rows, cols) if batch == 0 else (batch, rows, cols)
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-log_range, log_range + 1, shape)
    x = x.astype(np.float32).astype(dtype)
    q = assert_same_quantize(x, (br, bc), fmt, rule, eps)
    for out in (np.float32, ml_dtypes.bfloat16):
        assert_same_dequantize(q[0], q[1], (br, bc), fmt, out)


def test_one_and_two_threads_give_identical_bytes() -> None:
    x = (np.random.default_rng(8).standard_normal((3, 300, 520)) * 0.02).astype(ml_dtypes.bfloat16)
    for block in [(128, 128), (1, 32), (-1, -1)]:
        one = kernels.quantize(x, block, FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4, NonFinite.RAISE, 1)
        two = kernels.quantize(x, block, FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4, NonFinite.RAISE, 2)
        for a, b in zip(one, two, strict=True):
            assert a is not None and b is not None
            assert a.tobytes() == b.tobytes()
        d1 = kernels.dequantize(one[0], one[1], block, FLOAT8_E4M3FN, ml_dtypes.bfloat16, 1)
        d2 = kernels.dequantize(one[0], one[1], block, FLOAT8_E4M3FN, ml_dtypes.bfloat16, 2)
        assert d1.tobytes() == d2.tobytes()


def test_thread_count_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba

    pool = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert kernels.resolve_threads(None) == pool
    assert kernels.resolve_threads(1) == 1
    assert kernels.resolve_threads(10_000) == pool
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    assert kernels.resolve_threads(None) == 1
    assert kernels.resolve_threads(2) == min(2, pool)
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv(kernels.ENV_VAR, bad)
        with pytest.raises(InputError, match=kernels.ENV_VAR):
            kernels.resolve_threads(None)
    for wrong in (0, -1, True, 1.5):
        with pytest.raises(InputError, match="threads"):
            kernels.resolve_threads(wrong)  # type: ignore[arg-type]


def test_thread_setting_is_restored() -> None:
    import numba

    before = numba.get_num_threads()
    x = np.ones((4, 4), dtype=np.float32)
    kernels.quantize(x, (2, 2), FLOAT8_E4M3FN, ScaleRule.RCEIL, 1e-4, NonFinite.RAISE, 1)
    assert numba.get_num_threads() == before


def test_public_api_uses_the_kernels_and_matches_the_oracle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ue8m0

    x = (np.random.default_rng(9).standard_normal((2, 150, 260)) * 0.02).astype(ml_dtypes.bfloat16)
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    fast = ue8m0.quantize(x, (128, 128), backend="fast")
    ref = ue8m0.quantize(x, (128, 128), backend="reference")
    assert fast.codes.tobytes() == ref.codes.tobytes()
    assert fast.scale.tobytes() == ref.scale.tobytes()
    for dtype in (np.float32, ml_dtypes.bfloat16):
        a = ue8m0.dequantize(fast, dtype, backend="fast", threads=2)
        b = ue8m0.dequantize(fast, dtype, backend="reference")
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    monkeypatch.setenv(kernels.ENV_VAR, "zero")
    with pytest.raises(InputError, match=kernels.ENV_VAR):
        ue8m0.quantize(x, (128, 128))
