"""DeepSeek-V4.1-Flash release layouts read by inspect, verify and dequantize (the tiny checkpoint
of ``v41_tiny.py``): dense FP8 in the declared 32x32 blocks, FP4 routed experts under
``quantization_config.expert_dtype``, the Engram table's one scale per row per 32 columns, the
nested ``text_config``; and what is refused cleanly (an undeclared grid, ``relayout --to fp8``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ckpt_fixtures import all_tensors, run_cli, write_checkpoint
from v41_tiny import (
    ENGRAM_DIM,
    ENGRAM_LAYER,
    ENGRAM_ROWS,
    RELEASE_CONFIG,
    decode,
    release_tensors,
    write_release,
)

SCALED = [
    n for n in release_tensors() if n.endswith(".weight") and n[:-7] + ".scale" in release_tensors()
]
FP4 = [n for n in SCALED if release_tensors()[n].dtype == np.int8]


@pytest.fixture
def v41(tmp_path: Path) -> Path:
    return write_release(tmp_path / "v41")


def test_the_fixture_holds_each_kind() -> None:
    """What the tests below count on: 12 FP4 experts, 11 dense FP8 weights, one Engram table."""
    assert len(FP4) == 12 and len(SCALED) == 24
    assert release_tensors()[ENGRAM_LAYER + ".scale"].shape == (ENGRAM_ROWS, ENGRAM_DIM // 32)


def test_inspect_names_every_role_and_block(
    v41: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ue8m0.checkpoint.verify.COPY_BYTES", 7)  # scales read in many pieces
    code, out, err = run_cli(["inspect", v41, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["format"].startswith("DeepSeek-V4")
    roles = {role: row["tensors"] for role, row in info["by_role"].items()}
    assert roles["fp4 weight (packed E2M1)"] == 12
    assert roles["fp8 weight (1x32 row-group scales)"] == 1
    assert roles["fp8 weight"] == 11 and roles["scale"] == 24
    assert "orphan scale" not in roles
    assert info["blocks"] == [[1, 32], [32, 32]]
    # the scale statistics, counted piece by piece, equal a plain computation on every byte
    tensors = release_tensors()
    exps = (
        np.concatenate([tensors[n[:-7] + ".scale"].view(np.uint8).ravel() for n in SCALED]).astype(
            np.float64
        )
        - 127
    )
    stats = info["scale_stats"]
    assert stats["scales"] == exps.size and stats["power_of_two_fraction"] == 1.0
    assert [stats["log2_min"], stats["log2_median"], stats["log2_max"]] == [
        exps.min(),
        float(np.median(exps)),
        exps.max(),
    ]


def test_verify_passes_the_release_layout(v41: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["verify", v41, "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["passed"], out
    shapes = next(c for c in report["checks"] if c["check"].startswith("every FP8 weight"))
    assert shapes["detail"] == "24 FP8 weights"


def test_verify_finds_a_nan_engram_scale_in_its_last_piece(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ue8m0.checkpoint.verify.COPY_BYTES", 7)
    tensors = release_tensors()
    scale = tensors[ENGRAM_LAYER + ".scale"].view(np.uint8).copy()
    scale[-1, -1] = 0xFF
    tensors[ENGRAM_LAYER + ".scale"] = scale.view(ml_dtypes.float8_e8m0fnu)
    code, out, _ = run_cli(["verify", write_release(tmp_path / "nan", tensors), "--json"], capsys)
    failed = {c["check"]: c["failures"] for c in json.loads(out)["checks"] if not c["passed"]}
    assert code == 1 and set(failed) == {
        "scale_fmt ue8m0 => every scale an exact power of two",
        "no NaN/Inf in weights and scales",
    }
    assert failed["no NaN/Inf in weights and scales"] == [f"{ENGRAM_LAYER}.scale: non-finite scale"]


def test_dequantize_writes_bf16_equal_to_an_independent_decode(
    v41: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "f32"
    code, _, err = run_cli(["dequantize", v41, dst, "-q", "--dtype", "f32"], capsys)
    assert code == 0, err
    src, got = release_tensors(), all_tensors(dst)
    assert set(got) == {n for n in src if not n.endswith(".scale")}
    for name in SCALED:
        np.testing.assert_array_equal(got[name], decode(src, name).astype(np.float32), name)
    for name in set(got) - set(SCALED):  # unscaled tensors byte for byte
        assert got[name].dtype == src[name].dtype and got[name].tobytes() == src[name].tobytes()
    config = json.loads((dst / "config.json").read_text())
    assert config == {k: v for k, v in RELEASE_CONFIG.items() if k != "quantization_config"}


def test_dequantize_reads_each_scale_a_slab_at_a_time(
    v41: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release's Engram scale is 3 GB stored (12 GB as float32): dequantize reads a slab's
    grid rows with the slab, never a whole 2-D scale (slabs of 4 rows here)."""
    from ue8m0.checkpoint import slabs as slab_module
    from ue8m0.checkpoint.safetensors import SafetensorsFile
    from ue8m0.checkpoint.steps import dequantizing

    def small(shape: Any, itemsize: int, block_rows: int) -> Any:
        return slab_module.slabs(shape, itemsize, block_rows, target=4 * shape[-1] * itemsize)

    scale_reads: list[tuple[str, int]] = []
    read_rows, read = SafetensorsFile.read_rows, SafetensorsFile.read

    def spy_rows(self: SafetensorsFile, name: str, lead: int, r0: int, r1: int) -> Any:
        if name.endswith(".scale"):
            scale_reads.append((name, r1 - r0))
        return read_rows(self, name, lead, r0, r1)

    def no_whole_scale(self: SafetensorsFile, name: str) -> Any:
        assert not name.endswith(".scale"), f"{name} read whole"
        return read(self, name)

    monkeypatch.setattr(dequantizing, "slabs", small)
    monkeypatch.setattr(SafetensorsFile, "read_rows", spy_rows)
    monkeypatch.setattr(SafetensorsFile, "read", no_whole_scale)
    dst = tmp_path / "f32"
    code, _, err = run_cli(
        ["dequantize", v41, dst, "-q", "--dtype", "f32", "--workers", "1"], capsys
    )
    assert code == 0, err
    engram = [rows for name, rows in scale_reads if name == ENGRAM_LAYER + ".scale"]
    assert len(engram) == -(-ENGRAM_ROWS // 4) and max(engram) == 4
    got, src = all_tensors(dst), release_tensors()
    for name in SCALED:
        np.testing.assert_array_equal(got[name], decode(src, name).astype(np.float32), name)


@pytest.mark.parametrize(
    ("grid", "block"),
    [((2, 1), "64x64 (square, undeclared)"), ((ENGRAM_ROWS, 1), "1x64 (a row group of 64)")],
)
def test_an_engram_scale_of_another_block_is_refused(
    grid: tuple[int, int], block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = release_tensors()
    tensors[ENGRAM_LAYER + ".scale"] = np.full(grid, 127, np.uint8).view(ml_dtypes.float8_e8m0fnu)
    src = write_release(tmp_path / "bad", tensors)
    code, _, err = run_cli(["dequantize", src, tmp_path / "out", "-q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, (block, err)
    assert f"{ENGRAM_LAYER}.weight" in err and "weight_block_size [32, 32]" in err
    assert "model-00002-of-00002.safetensors" in err
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
    code, out, _ = run_cli(["verify", src, "--json"], capsys)
    shapes = next(c for c in json.loads(out)["checks"] if c["check"].startswith("every FP8"))
    assert code == 1 and shapes["failures"] == [
        f"{ENGRAM_LAYER}.scale: shape {list(grid)} does not fit [{ENGRAM_ROWS}, {ENGRAM_DIM}] "
        "with block (32, 32)"
    ]


def test_fp4_experts_need_expert_dtype_in_quantization_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """V4.1 declares expert_dtype only inside quantization_config; without it the I8 experts
    are refused, not copied as integers into a "BF16" output."""
    qc = {k: v for k, v in RELEASE_CONFIG["quantization_config"].items() if k != "expert_dtype"}
    src = write_release(tmp_path / "bad", config={**RELEASE_CONFIG, "quantization_config": qc})
    code, _, err = run_cli(["dequantize", src, tmp_path / "out", "-q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "expert_dtype: fp4" in err and ".ffn.experts." in err


def test_relayout_to_fp8_refuses_the_32x32_layout(
    v41: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "fp8"
    code, _, err = run_cli(["relayout", v41, dst, "--to", "fp8"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "config.json" in err and "weight_block_size [32, 32]" in err
    assert not (dst / "model.safetensors.index.json").exists()


def test_quantize_deepseek_v4_keeps_the_vision_tower_and_v41_bf16_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What V4.1 (and V4-Flash-Vision-Exp) keep in BF16/F32 stays there; a dense projection
    beside them is quantized."""
    rng = np.random.default_rng(3)
    names = [
        "layers.0.attn.wq_a.weight",
        "vision.blocks.0.attn.wqkv.weight",
        "aligner.w1.weight",
        "layers.0.attn.indexer.wk.weight",
        "mtp.0.confidence_head.proj.weight",
    ]
    tensors: dict[str, Any] = {
        n: rng.standard_normal((128, 128)).astype(ml_dtypes.bfloat16) for n in names
    }
    src = write_checkpoint(tmp_path / "bf16", {"model.safetensors": tensors}, {"model_type": "x"})
    dst = tmp_path / "out"
    code, _, err = run_cli(["quantize", src, dst, "-q", "--format", "deepseek-v4"], capsys)
    assert code == 0, err
    got = all_tensors(dst)
    assert got[names[0]].dtype == ml_dtypes.float8_e4m3fn
    for name in names[1:]:
        assert got[name].tobytes() == tensors[name].tobytes(), name


@pytest.mark.parametrize("n_floats", [0, 7, 8])
def test_log2_counts_give_numpys_statistics(n_floats: int) -> None:
    """inspect's scale statistics, counted by value, equal numpy's on the decoded values (byte
    and float scales mixed; NaN, zero and negative scales left out of the logs)."""
    from ue8m0.checkpoint.inspect import Log2Counts
    from ue8m0.checkpoint.scales import is_power_of_two
    from ue8m0.reference import decode_scale_bytes

    rng = np.random.default_rng(n_floats)
    codes = rng.integers(100, 140, 1001, dtype=np.uint8)
    codes[[3, 500]] = 0xFF
    floats = rng.lognormal(0, 3, n_floats).astype(np.float32)
    floats[:3] = [0.0, -2.0, np.nan][: min(3, n_floats)]
    counts = Log2Counts()
    counts.add(codes[:600], "U8")
    counts.add(codes[600:].view(ml_dtypes.float8_e8m0fnu), "F8_E8M0")
    counts.add(floats, "F32")
    values = np.concatenate([decode_scale_bytes(codes), floats])
    logs = np.log2(values[np.isfinite(values) & (values > 0)].astype(np.float64))
    assert counts.count == values.size
    assert counts.pow2 == int(np.count_nonzero(is_power_of_two(values)))
    assert counts.summary() == {
        "log2_min": logs.min(),
        "log2_median": float(np.median(logs)),
        "log2_max": logs.max(),
    }
    empty = Log2Counts()
    empty.add(np.full(4, 0xFF, np.uint8), "U8")
    assert empty.summary() == {} and empty.count == 4 and empty.pow2 == 0


@pytest.mark.parametrize("declared", [[32, 32], None, [1, 32]])
def test_inspect_names_row_group_scales_against_the_declared_block(
    declared: list[int] | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Engram table's 1x32 scales are named as such beside a 32x32 or no declared block;
    where 1x32 is the declared block (MXFP8's), they are plain FP8 weights' and the 32x32 ones
    are not row groups."""
    qc = dict(RELEASE_CONFIG["quantization_config"])
    qc.pop("weight_block_size")
    if declared is not None:
        qc["weight_block_size"] = declared
    src = write_release(tmp_path / "v41", config={**RELEASE_CONFIG, "quantization_config": qc})
    code, out, err = run_cli(["inspect", src, "--json"], capsys)
    assert code == 0, err
    roles = {role: row["tensors"] for role, row in json.loads(out)["by_role"].items()}
    row_group = roles.get("fp8 weight (1x32 row-group scales)", 0)
    assert (roles["fp8 weight"], row_group) == ((12, 0) if declared == [1, 32] else (11, 1))


def test_quantize_refuses_to_write_v4s_layout_for_a_v41_model(
    v41: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """V4.1 loaders read 32x32 blocks and Engram row-group scales; ``--format deepseek-v4``
    writes V4's 128x128 layout, which they would misread: refused in one line, nothing
    written. The same BF16 tensors under another model type are written."""
    bf16 = tmp_path / "bf16"
    assert run_cli(["dequantize", v41, bf16, "-q"], capsys)[0] == 0
    dst = tmp_path / "out"
    code, _, err = run_cli(["quantize", bf16, dst, "-q", "--format", "deepseek-v4"], capsys)
    assert code != 0 and not dst.exists()
    assert len(err.strip().splitlines()) == 1 and "config.json" in err
    assert "deepseek_v41" in err and "read, not written" in err
    config = json.loads((bf16 / "config.json").read_text())
    config["model_type"] = config["text_config"]["model_type"] = "deepseek_v4"
    (bf16 / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["quantize", bf16, dst, "-q", "--format", "deepseek-v4"], capsys)
    assert code == 0, err
