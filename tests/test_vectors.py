"""The named edge-case table: vectors V01–V17 of ue8m0_numerics.md §(e), bytes exact.

Each vector is one block of 128 (the listed values, then zeros). Columns:
``A`` rceil with eps 1e-4 (DeepGEMM utils, DeepSeek weights), ``B`` log2 with eps 1e-4 (DeepSeek-V3.1
Triton), ``E`` rceil with eps 0 (torchao RCEIL / TE MXFP8), ``F`` floor with eps 0 (OCP MX),
``G`` ceil with eps 0 (torchao CEIL).
"""

from __future__ import annotations

import numpy as np
import pytest

import ue8m0

COLUMNS = {
    "A": ("rceil", 1e-4),
    "B": ("log2", 1e-4),
    "E": ("rceil", 0.0),
    "F": ("floor", 0.0),
    "G": ("ceil", 0.0),
}

# name: (inputs as float32 hex, {column: "byte: element bytes"})
VECTORS: dict[str, tuple[list[str], dict[str, str]]] = {
    "V01 448, 1, -3.3": (
        ["43E00000", "3F800000", "C0533333"],
        {
            "A": "127: 7E 38 C5",
            "B": "127: 7E 38 C5",
            "E": "127: 7E 38 C5",
            "F": "127: 7E 38 C5",
            "G": "128: 76 30 BD",
        },
    ),
    "V02 449 (floor saturates)": (
        ["43E08000", "3F800000"],
        {
            "A": "128: 76 30",
            "B": "128: 76 30",
            "E": "128: 76 30",
            "F": "127: 7E 38",
            "G": "128: 76 30",
        },
    ),
    "V03 957, -100": (
        ["446F4000", "C2C80000"],
        {
            "A": "129: 77 DC",
            "B": "129: 77 DC",
            "E": "129: 77 DC",
            "F": "128: 7E E4",
            "G": "129: 77 DC",
        },
    ),
    "V04 all zeros": ([], {"A": "105:", "B": "105:", "E": "0:", "F": "0:", "G": "0:"}),
    "V05 1, -0.5, 0.001": (
        ["3F800000", "BF000000", "3A83126F"],
        {c: "119: 78 F0 28" for c in "ABEFG"},
    ),
    "V06 0.4375 = 448*2^-10, 0.1": (
        ["3EE00000", "3DCCCCCD"],
        {
            "A": "117: 7E 6D",
            "B": "117: 7E 6D",
            "E": "117: 7E 6D",
            "F": "117: 7E 6D",
            "G": "118: 76 65",
        },
    ),
    "V07 below eps": (
        ["3851B717", "B727C5AC"],
        {
            "A": "105: 75 E2",
            "B": "105: 75 E2",
            "E": "104: 7D EA",
            "F": "104: 7D EA",
            "G": "105: 75 E2",
        },
    ),
    "V08 1.7500001 (log2 vs bits)": (
        ["3FE00001", "3F800000"],
        {
            "A": "120: 76 70",
            "B": "119: 7E 78",
            "E": "120: 76 70",
            "F": "119: 7E 78",
            "G": "120: 76 70",
        },
    ),
    "V09 subnormal ratio 2^-127": (
        ["04600000", "03E00000"],
        {"A": "105: 00 00", "B": "105: 00 00", "E": "0: 7E 76", "F": "0: 7E 76", "G": "1: 76 6E"},
    ),
    "V10 fp32 subnormal input": (
        ["00000200"],
        {"A": "105: 00", "B": "105: 00", "E": "0: 00", "F": "0: 00", "G": "0: 00"},
    ),
    "V13 -300, 2": (
        ["C3960000", "40000000"],
        {
            "A": "127: F9 40",
            "B": "127: F9 40",
            "E": "127: F9 40",
            "F": "127: F9 40",
            "G": "128: F1 38",
        },
    ),
    "V14 ties": (
        ["43E00000", "41880000", "C1880000", "41980000", "3BF00000"],
        {
            "A": "127: 7E 58 D8 5A 04",
            "B": "127: 7E 58 D8 5A 04",
            "E": "127: 7E 58 D8 5A 04",
            "F": "127: 7E 58 D8 5A 04",
            "G": "128: 76 50 D0 52 02",
        },
    ),
    "V15 FLT_MAX, 1": (
        ["7F7FFFFF", "3F800000"],
        {
            "A": "247: 78 00",
            "B": "247: 78 00",
            "E": "247: 78 00",
            "F": "246: 7E 00",
            "G": "247: 78 00",
        },
    ),
    "V16 464 (tie to 448)": (
        ["43E80000"],
        {"A": "128: 76", "B": "128: 76", "E": "128: 76", "F": "127: 7E", "G": "128: 76"},
    ),
    "V17 1e-4": (
        ["38D1B717"],
        {"A": "105: 7D", "B": "105: 7D", "E": "105: 7D", "F": "105: 7D", "G": "106: 75"},
    ),
}


def _block(hexes: list[str]) -> np.ndarray:
    x = np.zeros((1, 128), np.float32)
    x[0, : len(hexes)] = np.array([int(h, 16) for h in hexes], np.uint32).view(np.float32)
    return x


def _expected(text: str) -> tuple[int, list[int]]:
    byte, _, elems = text.partition(":")
    return int(byte), [int(e, 16) for e in elems.split()]


CASES = [(name, col) for name, (_, cols) in VECTORS.items() for col in cols]


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize(("name", "column"), CASES)
def test_vector(name: str, column: str, backend: str) -> None:
    hexes, cols = VECTORS[name]
    rule, eps = COLUMNS[column]
    byte, elems = _expected(cols[column])
    q = ue8m0.quantize(_block(hexes), block=(1, 128), scale_rule=rule, eps=eps, backend=backend)
    assert q.scale_codes is not None
    assert int(q.scale_codes[0, 0]) == byte
    assert q.codes[0, : len(elems)].tolist() == elems
    assert not q.codes[0, len(elems) :].any()
    assert q.scale[0, 0] == np.float32(2.0 ** (byte - 127))


@pytest.mark.parametrize("rule", ["rceil", "log2", "floor", "ceil", "even", "fp32"])
@pytest.mark.parametrize("bad", ["7FC00000", "7F800000", "FF800000"])
def test_nonfinite_propagate_v11_v12(rule: str, bad: str) -> None:
    """V11/V12 under ``propagate``: scale NaN (byte 0xFF), every element the NaN code (torchao)."""
    x = _block([bad, "3F800000"])
    x = np.concatenate([x, _block(["3F800000"])])
    q = ue8m0.quantize(x, block=(1, 128), scale_rule=rule, nonfinite="propagate")
    assert np.isnan(q.scale[0, 0]) and not np.isnan(q.scale[1, 0])
    assert (q.codes[0] == 0x7F).all()
    assert q.codes[1, 0] == (0x7E if rule == "fp32" else 0x78)
    if q.scale_codes is not None:
        assert q.scale_codes[:, 0].tolist() == [255, 119]
    assert np.isnan(ue8m0.dequantize(q)[0]).all()


@pytest.mark.parametrize("rule", ["rceil", "fp32"])
def test_nonfinite_raise_names_block_and_value(rule: str) -> None:
    x = np.ones((3, 256), np.float32)
    x[2, 130] = np.inf
    x[2, 200] = np.nan
    with pytest.raises(ue8m0.NonFiniteError, match=r"inf in block \(2, 1\)") as info:
        ue8m0.quantize(x, block=(1, 128), scale_rule=rule)
    assert info.value.block == (2, 1) and info.value.value == np.inf


def test_eps_zero_all_zero_block() -> None:
    x = np.zeros((2, 128), np.float32)
    q = ue8m0.quantize(x, block=(1, 128), eps=0)
    assert q.scale_codes is not None and q.scale_codes.tolist() == [[0], [0]]
    assert q.scale[0, 0] == np.float32(2.0**-127) and not q.codes.any()
    q = ue8m0.quantize(x, block=(1, 128), eps=0, scale_rule="fp32")
    assert q.scale.tolist() == [[0.0], [0.0]] and not q.codes.any()
    assert not ue8m0.dequantize(q).any()
