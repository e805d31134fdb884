"""``ue8m0 requantize``: FP32-scale FP8 -> UE8M0 in float32, pow2 blocks copied, report, MSE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ue8m0
from ckpt_fixtures import (
    all_tensors,
    run_cli,
    save,
    synthetic_tensors,
    visible_files,
    write_checkpoint,
)
from ue8m0.checkpoint.options import Fp8Options
from ue8m0.checkpoint.plan_fp8 import plan_fp8
from ue8m0.checkpoint.requant_report import build_report
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.source import open_checkpoint
from ue8m0.checkpoint.steps.fp8 import _requantize_slab

E4M3 = ml_dtypes.float8_e4m3fn


def _dequant(codes: np.ndarray, scale: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """float32 ``decode(codes) * scale`` computed here independently of the library."""
    s = np.repeat(np.repeat(scale.astype(np.float32), block[0], -2), block[1], -1)
    s = s[..., : codes.shape[-2], : codes.shape[-1]]
    return codes.astype(np.float32) * s


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ue8m0.cli.main import main

    base = tmp_path_factory.mktemp("rq")
    src = write_checkpoint(base / "src", synthetic_tensors())
    runs = (
        ["quantize", src, base / "fp32", "--scale-rule", "fp32", "--pad-partial", "-q"],
        ["quantize", src, base / "ue8m0", "--pad-partial", "-q"],
        ["requantize", base / "fp32", base / "req", "-q", "--report", base / "report"],
        ["requantize", base / "fp32", base / "mse", "-q", "--scale-search", "mse"],
    )
    for args in runs:
        try:
            main([str(a) for a in args])
        except SystemExit as exc:  # pragma: no cover - only on failure
            assert not exc.code
    return {"src": src, **{k: base / k for k in ("fp32", "ue8m0", "req", "mse")}, "base": base}


def test_requantized_bytes_equal_quantize_of_float32_dequantized(ckpts: dict[str, Path]) -> None:
    old, new = all_tensors(ckpts["fp32"]), all_tensors(ckpts["req"])
    fp8 = [n for n, a in old.items() if a.dtype == E4M3]
    assert len(fp8) == 4
    for name in fp8:
        x = _dequant(old[name], old[name + "_scale_inv"], (128, 128))
        want = ue8m0.quantize(x, block=(128, 128), scale_rule="rceil")
        np.testing.assert_array_equal(new[name].view(np.uint8), want.codes, err_msg=name)
        np.testing.assert_array_equal(new[name + "_scale_inv"], want.scale, err_msg=name)
    kept = {n for n in old if n not in fp8 and not n.endswith("_scale_inv")}
    for name in kept:
        np.testing.assert_array_equal(new[name].view(np.uint8), old[name].view(np.uint8))
    qc = json.loads((ckpts["req"] / "config.json").read_text())["quantization_config"]
    assert qc["scale_fmt"] == "ue8m0" and qc["quant_method"] == "fp8"


def test_report_metrics_match_an_independent_computation(ckpts: dict[str, Path]) -> None:
    report = json.loads((ckpts["base"] / "report.json").read_text())
    assert (ckpts["base"] / "report.md").read_text().startswith("# ue8m0 requantize report")
    old, new = all_tensors(ckpts["fp32"]), all_tensors(ckpts["req"])
    for row in report["tensors"]:
        name = row["name"]
        x = _dequant(old[name], old[name + "_scale_inv"], (128, 128)).astype(np.float64)
        y = _dequant(new[name], new[name + "_scale_inv"], (128, 128)).astype(np.float64)
        rel = np.linalg.norm(y - x) / np.linalg.norm(x)
        assert row["rel_frobenius"] == pytest.approx(rel, rel=1e-9)
        assert row["max_abs_error"] == pytest.approx(np.abs(y - x).max(), rel=1e-12)
        cos = float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y)))
        assert row["cosine"] == pytest.approx(cos, rel=1e-12)
        assert row["saturated"] == 0 and 0 <= row["flushed"] < 1e-3
    assert 0.02 < report["total"]["rel_frobenius"] < 0.03


def test_requantized_output_verifies_against_its_fp8_source(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for out in ("req", "mse"):
        code, text, _ = run_cli(
            ["verify", ckpts[out], "--against", ckpts["fp32"], "--json"], capsys
        )
        assert code == 0, text
        assert all(c["passed"] for c in json.loads(text)["checks"])


@pytest.mark.parametrize("scale_dtype", ["f32", "e8m0"])
def test_already_ue8m0_checkpoint_comes_out_byte_identical(
    scale_dtype: str, ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever servable dtype the source stores its UE8M0 scales in (``--scale-dtype auto``
    keeps it)."""
    src = ckpts["ue8m0"]
    if scale_dtype != "f32":
        src = tmp_path / "src"
        code, _, err = run_cli(
            ["quantize", ckpts["src"], src, "--pad-partial", "-q", "--scale-dtype", scale_dtype],
            capsys,
        )
        assert code == 0, err
    code, out, err = run_cli(["requantize", src, tmp_path / "again", "--json"], capsys)
    assert code == 0, err
    total = json.loads(out)["report"]["total"]
    assert total["blocks_copied"] == total["blocks"] > 0 and total["rel_frobenius"] == 0
    again, before = visible_files(tmp_path / "again"), visible_files(src)
    # the weights, scales, config and copied files; the model card says what ran
    assert b"ue8m0 requantize" in again.pop("README.md") and b"ue8m0 quantize" in before.pop(
        "README.md", b"ue8m0 quantize"
    )
    assert again == before


def test_rq1_float32_path_and_per_block_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RQ1 vector (vLLM's fp32 path, not SGLang's bf16 one) in block 0; block 1 already has
    a power-of-two scale and is copied byte for byte."""
    codes = np.zeros((128, 256), np.uint8)
    codes[0, :3] = [0x7E, 0x38, 0xC5]
    codes[5:9, 128:] = np.arange(4 * 128).reshape(4, 128) % 0x7E
    s_old = np.array([0x3B800008], np.uint32).view(np.float32)[0]
    scale = np.array([[s_old, 2.0**-8]], np.float32)
    src = tmp_path / "src"
    src.mkdir()
    save(src / "model.safetensors", {"l.weight": codes.view(E4M3), "l.weight_scale_inv": scale})
    qc = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    (src / "config.json").write_text(json.dumps({"quantization_config": qc}))
    assert run_cli(["requantize", src, tmp_path / "out", "-q"], capsys)[0] == 0
    got = all_tensors(tmp_path / "out")
    new_codes = got["l.weight"].view(np.uint8)
    assert list(new_codes[0, :3]) == [0x76, 0x30, 0xBD]  # SGLang's bf16 path keeps 7E 38 C5
    np.testing.assert_array_equal(got["l.weight_scale_inv"], [[2.0**-7, 2.0**-8]])
    np.testing.assert_array_equal(new_codes[:, 128:], codes[:, 128:])


def test_mse_search_report_never_worse_than_the_rule(ckpts: dict[str, Path]) -> None:
    plan = plan_fp8(open_checkpoint(ckpts["fp32"]), "requantize", Fp8Options(scale_search="mse"))
    report = build_report(plan, ckpts["mse"])
    for row in report["tensors"]:
        assert row["search_err_sq"] <= row["rule_err_sq"], row["name"]
    assert report["total"]["gain_db"] >= 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    mantissa=st.floats(1.0, 1.99),
    exp=st.integers(-20, 5),
)
def test_mse_never_larger_per_block_error_than_rceil(seed: int, mantissa: float, exp: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 0x7F, (64, 96), dtype=np.uint8) | (
        rng.integers(0, 2, (64, 96), dtype=np.uint8) << 7
    )
    codes[codes & 0x7F == 0x7F] = 0  # no NaN codes
    scale = (np.float32(mantissa) * np.float32(2.0**exp) * rng.uniform(0.5, 2, (2, 3))).astype(
        np.float32
    )
    x = _dequant(codes.view(E4M3), scale, (32, 32))
    best, rule = _requantize_slab(x, (32, 32), Fp8Options(scale_search="mse"), "e4m3", 1)
    assert rule is not None

    def block_sse(q: ue8m0.QuantizedTensor) -> np.ndarray:
        d = (ue8m0.dequantize(q).astype(np.float64) - x) ** 2
        return d.reshape(2, 32, 3, 32).sum(axis=(1, 3))

    assert (block_sse(best) <= block_sse(rule)).all()


def test_compressed_tensors_output(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = tmp_path / "ct"
    assert (
        run_cli(["requantize", ckpts["fp32"], ct, "-q", "--format", "compressed-tensors"], capsys)[
            0
        ]
        == 0
    )
    got, ds = all_tensors(ct), all_tensors(ckpts["req"])
    for name, arr in ds.items():
        key = name.replace("_scale_inv", "_scale")
        np.testing.assert_array_equal(got[key].view(np.uint8), arr.view(np.uint8))
    qc = json.loads((ct / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert weights["strategy"] == "block" and weights["block_structure"] == [128, 128]
    from compressed_tensors.quantization import QuantizationConfig

    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.config_groups["group_0"].weights.block_structure == [128, 128]
    code, out, _ = run_cli(["inspect", ct, "--json"], capsys)
    assert code == 0 and json.loads(out)["format"].startswith("compressed-tensors FP8 block")
    assert run_cli(["verify", ct, "-q"], capsys)[0] == 0
    assert run_cli(["dequantize", ct, tmp_path / "a", "-q"], capsys)[0] == 0
    assert run_cli(["dequantize", ckpts["req"], tmp_path / "b", "-q"], capsys)[0] == 0
    assert (
        visible_files(tmp_path / "a")["model-00002-of-00002.safetensors"]
        == visible_files(tmp_path / "b")["model-00002-of-00002.safetensors"]
    )


@pytest.mark.parametrize(("fmt", "block"), [("compressed-tensors", (128, 128)), ("mxfp8", (1, 32))])
def test_quantize_other_formats(
    ckpts: dict[str, Path],
    tmp_path: Path,
    fmt: str,
    block: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / fmt
    args = ["quantize", ckpts["src"], out, "-q", "--format", fmt, "--scale-search", "mse"]
    assert run_cli(args, capsys)[0] == 0
    src, got = all_tensors(ckpts["src"]), all_tensors(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    want = ue8m0.quantize(src[name], block=block, scale_search="mse")
    np.testing.assert_array_equal(got[name].view(np.uint8), want.codes)
    if fmt == "mxfp8":
        np.testing.assert_array_equal(got[name + "_scale"], want.scale_codes)
        assert got[name + "_scale"].dtype == np.uint8
    else:
        np.testing.assert_array_equal(got[name + "_scale"], want.scale)
    assert run_cli(["verify", out, "--against", ckpts["src"], "-q"], capsys)[0] == 0


def test_requantize_refuses_a_checkpoint_without_fp8(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["requantize", ckpts["src"], tmp_path / "x"], capsys)
    assert code == 2 and "no FP8 weights" in err


def test_report_reads_an_fp8_checkpoint_as_its_dequantized_values(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f32 = tmp_path / "f32"
    assert run_cli(["dequantize", ckpts["fp32"], f32, "--dtype", "f32", "-q"], capsys)[0] == 0
    docs = []
    for ckpt in (ckpts["fp32"], f32):
        code, out, err = run_cli(["report", ckpt, "--json", "--recipe", "rceil"], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    fp8 = {t["name"]: t for t in docs[0]["tensors"]}
    plain = {t["name"]: t for t in docs[1]["tensors"]}
    assert len(fp8) == len(plain) and not any(n.endswith("_scale_inv") for n in fp8)
    for name, row in fp8.items():
        assert row["recipes"] == plain[name]["recipes"], name


def test_requantize_prints_a_summary_and_the_worst_tensors_unless_verbose(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["requantize", ckpts["fp32"], tmp_path / "a", "--top", "1"], capsys)
    report = json.loads(
        run_cli(["requantize", ckpts["fp32"], tmp_path / "b", "--json"], capsys)[1]
    )["report"]
    names = [r["name"] for r in report["tensors"]]
    worst = max(report["tensors"], key=lambda r: r["rel_frobenius"])["name"]
    assert code == 0 and len(names) > 1
    assert "rel. Frobenius error per tensor: p50" in out
    assert f"worst 1 of {len(names)}" in out and worst in out
    assert [n for n in names if n in out] == [worst]
    code, out, _ = run_cli(["requantize", ckpts["fp32"], tmp_path / "c", "--verbose"], capsys)
    assert code == 0 and all(n in out for n in names)


def test_u8_scales_come_out_as_the_same_bytes_in_f8_e8m0(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A U8-scale source (which vLLM and SGLang misread) is requantized to the same bytes as
    F8_E8M0 by --scale-dtype auto; an explicit u8 is refused unless not for serving."""
    src = tmp_path / "src"
    args = ["--pad-partial", "-q", "--scale-dtype", "u8", "--not-for-serving"]
    assert run_cli(["quantize", ckpts["src"], src, *args], capsys)[0] == 0
    assert run_cli(["requantize", src, tmp_path / "again", "-q"], capsys)[0] == 0
    for shard in sorted(src.glob("*.safetensors")):
        with SafetensorsFile(shard) as a, SafetensorsFile(tmp_path / "again" / shard.name) as b:
            for name, info in a.tensors.items():
                got = b.tensors[name]
                assert got.dtype == ("F8_E8M0" if info.dtype == "U8" else info.dtype), name
                assert (
                    a.read_bytes(name, 0, info.nbytes).tobytes()
                    == b.read_bytes(name, 0, got.nbytes).tobytes()
                )
    code, _, err = run_cli(["requantize", src, tmp_path / "u8", "--scale-dtype", "u8"], capsys)
    assert code == 2 and "--scale-dtype: vLLM and SGLang copy U8" in err
