"""DeepSeek-V4 release layouts read by inspect, verify and dequantize: FP8 dense layers with
F8_E8M0 (or F32) ``<module>.scale``, routed experts packed FP4 (int8 ``[out, in/2]``, element 2i in
the low nibble) with one F8_E8M0 scale per 32 inputs under ``expert_dtype: fp4``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ckpt_fixtures import run_cli, write_checkpoint
from ue8m0.checkpoint.safetensors import SafetensorsFile

E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu
#: E2M1 magnitudes, written here from the format (sign bit 3)
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _decode_fp4(packed: np.ndarray, scale_bytes: np.ndarray) -> np.ndarray:
    """Independent decode: low nibble first, then the high one; times 2**(byte - 127)."""
    out, half = packed.shape
    values = np.zeros((out, 2 * half), np.float64)
    for r in range(out):
        for i in range(half):
            byte = int(packed[r, i]) & 0xFF
            for j, nib in enumerate((byte & 0xF, byte >> 4)):
                mag = E2M1[nib & 7]
                values[r, 2 * i + j] = -mag if nib & 8 else mag
    s = np.exp2(scale_bytes.astype(np.float64) - 127)
    return values * np.repeat(s, 32, axis=1)


def _fp4_packed(rng: np.random.Generator, out: int, n_in: int) -> np.ndarray:
    """Random packed FP4 whose every group of 32 holds a +-6 (so V4's rule gives its scale
    back) in its first element."""
    codes = rng.integers(0, 16, (out, n_in), dtype=np.uint8)
    codes[:, ::32] = rng.choice(np.array([7, 15], np.uint8), (out, n_in // 32))
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(np.int8)


def _v4_tensors(rng: np.random.Generator, fp4: bool = True) -> dict[str, np.ndarray]:
    codes = rng.integers(0, 0x7F, (256, 256), dtype=np.uint8)
    codes[codes == 0x7F] = 0  # no NaN codes
    codes[::128, ::128] = 0x7E  # each 128x128 block holds a 448 (rceil gives its scale back)
    dense = {
        "layers.0.attn.wq_a.weight": codes.view(E4M3),
        "layers.0.attn.wq_a.scale": rng.integers(110, 125, (2, 2), dtype=np.uint8).view(E8M0),
        "layers.0.attn_norm.weight": np.ones(256, np.float32),
        "layers.0.ffn.gate.weight": rng.standard_normal((4, 256)).astype(ml_dtypes.bfloat16),
        "embed.weight": rng.standard_normal((64, 256)).astype(ml_dtypes.bfloat16),
    }
    experts: dict[str, np.ndarray] = {}
    for e in range(2):
        name = f"layers.0.ffn.experts.{e}.w1"
        if fp4:
            experts[name + ".weight"] = _fp4_packed(rng, 128, 128)
            experts[name + ".scale"] = rng.integers(115, 130, (128, 4), dtype=np.uint8).view(E8M0)
        else:  # V4-Flash-Base: FP8 experts with F32 power-of-two .scale
            experts[name + ".weight"] = codes[:128, :128].copy().view(E4M3)
            experts[name + ".scale"] = np.full((1, 1), 2.0**-8, np.float32)
    return {**dense, **experts}


def _config(expert_dtype: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": "deepseek_v4",
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "scale_fmt": "ue8m0",
            "weight_block_size": [128, 128],
        },
    }
    if expert_dtype is not None:
        config["expert_dtype"] = expert_dtype
    return config


@pytest.fixture
def v4(tmp_path: Path) -> Path:
    tensors = _v4_tensors(np.random.default_rng(0))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": {n: tensors[n] for n in names[: len(names) // 2]},
        "model-00002-of-00002.safetensors": {n: tensors[n] for n in names[len(names) // 2 :]},
    }
    return write_checkpoint(tmp_path / "v4", shards, _config("fp4"))


def test_inspect_names_fp4_experts_and_their_scales(
    v4: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", v4, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["format"].startswith("DeepSeek-V4")
    roles = info["by_role"]
    assert roles["fp4 weight (packed E2M1)"]["tensors"] == 2
    assert roles["scale"]["tensors"] == 3 and "orphan scale" not in roles


def test_verify_passes_a_well_formed_v4_checkpoint(
    v4: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["verify", v4, "--json"], capsys)
    assert code == 0, out
    assert json.loads(out)["passed"]


def test_dequantize_writes_plain_bf16_equal_to_an_independent_decode(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "bf16"
    assert run_cli(["dequantize", v4, dst, "-q", "--dtype", "f32"], capsys)[0] == 0
    config = json.loads((dst / "config.json").read_text())
    assert "quantization_config" not in config and "expert_dtype" not in config
    src = _v4_tensors(np.random.default_rng(0))
    names = []
    for shard in sorted(dst.glob("*.safetensors")):
        with SafetensorsFile(shard) as f:
            for name in f.tensors:
                names.append(name)
                got = f.get(name)
                if name.endswith("experts.0.w1.weight") or name.endswith("experts.1.w1.weight"):
                    scale = src[name[: -len(".weight")] + ".scale"].view(np.uint8)
                    want = _decode_fp4(src[name], scale)
                    assert got.dtype == np.float32 and got.shape == (128, 128)
                    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert not [n for n in names if n.endswith(".scale")]


def test_dequantize_bf16_rounds_once(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f32, bf16 = tmp_path / "f32", tmp_path / "bf16"
    assert run_cli(["dequantize", v4, f32, "-q", "--dtype", "f32"], capsys)[0] == 0
    assert run_cli(["dequantize", v4, bf16, "-q"], capsys)[0] == 0
    name = "layers.0.ffn.experts.1.w1.weight"
    shard = json.loads((f32 / "model.safetensors.index.json").read_text())["weight_map"][name]
    with SafetensorsFile(f32 / shard) as a, SafetensorsFile(bf16 / shard) as b:
        np.testing.assert_array_equal(
            b.get(name).view(np.uint16), a.get(name).astype(ml_dtypes.bfloat16).view(np.uint16)
        )


def test_v4_flash_base_dequantizes_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = _v4_tensors(np.random.default_rng(1), fp4=False)
    src = write_checkpoint(tmp_path / "base", {"model.safetensors": tensors}, _config("fp8"))
    dst = tmp_path / "out"
    assert run_cli(["dequantize", src, dst, "-q", "--dtype", "f32"], capsys)[0] == 0
    with SafetensorsFile(dst / "model.safetensors") as f:
        name = "layers.0.ffn.experts.0.w1.weight"
        want = tensors[name].astype(np.float32) * np.float32(2.0**-8)
        np.testing.assert_array_equal(f.get(name), want)


def _refused(
    tmp_path: Path, tensors: dict[str, np.ndarray], config: dict[str, Any], capsys: Any
) -> str:
    src = write_checkpoint(tmp_path / "bad", {"model.safetensors": tensors}, config)
    dst = tmp_path / "out"
    code, _, err = run_cli(["dequantize", src, dst, "-q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (dst / "model.safetensors.index.json").exists()
    return err


def test_fp4_weights_without_expert_dtype_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(tmp_path, _v4_tensors(np.random.default_rng(2)), _config(None), capsys)
    assert "expert_dtype: fp4" in err and "experts.0.w1.weight" in err


def test_a_nan_fp4_scale_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors = _v4_tensors(np.random.default_rng(3))
    scale = tensors["layers.0.ffn.experts.1.w1.scale"].view(np.uint8).copy()
    scale[5, 2] = 0xFF
    tensors["layers.0.ffn.experts.1.w1.scale"] = scale.view(E8M0)
    err = _refused(tmp_path, tensors, _config("fp4"), capsys)
    assert "NaN" in err and "experts.1.w1.weight" in err


def test_a_wrong_shaped_fp4_scale_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = _v4_tensors(np.random.default_rng(4))
    tensors["layers.0.ffn.experts.0.w1.scale"] = np.full((128, 2), 127, np.uint8).view(E8M0)
    err = _refused(tmp_path, tensors, _config("fp4"), capsys)
    assert "needs a scale of shape [128, 4]" in err


def test_a_scale_without_its_weight_fails_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = _v4_tensors(np.random.default_rng(5))
    del tensors["layers.0.ffn.experts.0.w1.weight"]
    src = write_checkpoint(tmp_path / "orphan", {"model.safetensors": tensors}, _config("fp4"))
    code, out, _ = run_cli(["verify", src, "--json"], capsys)
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and not checks["no orphan scales"]["passed"]
    assert "experts.0.w1.scale" in checks["no orphan scales"]["failures"][0]


def _read_all(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every tensor of a checkpoint: name -> (dtype tag, raw bytes)."""
    out = {}
    for shard in sorted(root.glob("*.safetensors")):
        with SafetensorsFile(shard) as f:
            for name, info in f.tensors.items():
                out[name] = (info.dtype, f.read_bytes(name, 0, info.nbytes).tobytes())
    return out


def _expert_names(tensors: dict[str, Any]) -> list[str]:
    return sorted(n for n in tensors if ".experts." in n and n.endswith(".weight"))


def test_relayout_to_fp8_is_deepseeks_cast_byte_for_byte(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ue8m0.deepseek_v4 import cast_fp4_to_fp8_v4_oracle

    dst = tmp_path / "fp8"
    code, out, err = run_cli(["relayout", v4, dst, "--to", "fp8", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["lossy_tiles"] == 0
    src, got = _read_all(v4), _read_all(dst)
    assert set(src) == set(got)
    experts = _expert_names(src)
    for name in experts:
        scale = name[: -len(".weight")] + ".scale"
        packed = np.frombuffer(src[name][1], np.int8).reshape(128, 64)
        sbytes = np.frombuffer(src[scale][1], np.uint8).reshape(128, 4)
        want = cast_fp4_to_fp8_v4_oracle(packed, sbytes)
        assert got[name] == ("F8_E4M3", want.codes.tobytes())
        assert got[scale] == ("F8_E8M0", want.scale_bytes.tobytes())
    for name in set(src) - set(experts) - {n[: -len(".weight")] + ".scale" for n in experts}:
        assert got[name] == src[name], name  # every other tensor byte for byte
    config = json.loads((dst / "config.json").read_text())
    assert config["expert_dtype"] == "fp8"
    assert config["quantization_config"]["expert_dtype"] == "fp8"
    # the FP8 output dequantizes to the same values (the cast is exact here; DeepSeek's table
    # reads code 8 as +0, so -0 becomes +0: equal as values)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["dequantize", v4, a, "-q", "--dtype", "f32"], capsys)[0] == 0
    assert run_cli(["dequantize", dst, b, "-q", "--dtype", "f32"], capsys)[0] == 0
    va, vb = _read_all(a), _read_all(b)
    assert set(va) == set(vb)
    for name, (_tag, raw) in va.items():
        np.testing.assert_array_equal(
            np.frombuffer(raw, np.float32), np.frombuffer(vb[name][1], np.float32)
        )


def _spread_tensors() -> dict[str, np.ndarray]:
    """One expert whose first tile spans 20 binades of group scales (lossy), the second 3."""
    rng = np.random.default_rng(9)
    tensors = _v4_tensors(rng)
    scale = rng.integers(120, 123, (128, 8), dtype=np.uint8)
    scale[5, 1] = 100  # 20 binades below the tile's largest group: small elements change
    name = "layers.0.ffn.experts.0.w1"
    tensors[name + ".weight"] = _fp4_packed(rng, 128, 256)
    tensors[name + ".scale"] = scale.view(E8M0)
    return tensors


def test_relayout_counts_lossy_tiles_exactly_and_strict_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ue8m0.deepseek_v4 import cast_fp4_to_fp8_v4_oracle

    tensors = _spread_tensors()
    src = write_checkpoint(tmp_path / "src", {"model.safetensors": tensors}, _config("fp4"))
    name = "layers.0.ffn.experts.0.w1"
    want = cast_fp4_to_fp8_v4_oracle(tensors[name + ".weight"], tensors[name + ".scale"])
    assert want.lossy.count == 1  # the crafted tile, by the oracle
    code, out, err = run_cli(["relayout", src, tmp_path / "fp8", "--to", "fp8", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["lossy_tiles"] == 1
    row = next(r for r in result["report"]["tensors"] if r["name"] == name + ".weight")
    assert row["lossy"][0][:3] == [0, 0, 0] and row["lossy"][0][3] == pytest.approx(
        float(want.lossy.max_abs_error[0, 0])
    )
    # the step's sums (exact tiles from the FP4 codes alone) equal a full decode's
    from ue8m0.metrics import ErrorStats

    out = _read_all(tmp_path / "fp8")
    codes = np.frombuffer(out[name + ".weight"][1], np.uint8).reshape(128, 256)
    tile = np.frombuffer(out[name + ".scale"][1], np.uint8).reshape(1, 2)
    e4m3 = codes.view(E4M3).astype(np.float64)
    approx = e4m3 * np.repeat(np.exp2(tile.astype(np.float64) - 127), 128, axis=1)
    ref = _decode_fp4(tensors[name + ".weight"], tensors[name + ".scale"].view(np.uint8))
    full = ErrorStats()
    full.update(ref, approx)
    want_row = full.result()
    for key in ("rel_frobenius", "cosine", "sqnr_db"):
        assert row[key] == pytest.approx(want_row[key], rel=1e-12), key
    assert row["max_abs_error"] == want_row["max_abs_error"] > 0
    assert row["flushed"] == want_row["flushed"] > 0
    strict = tmp_path / "strict"
    code, _, err = run_cli(["relayout", src, strict, "--to", "fp8", "--strict"], capsys)
    assert code == 2 and "--strict: tile (0, 0) would change" in err
    assert not (strict / "model.safetensors.index.json").exists()


def test_relayout_to_fp8_with_workers_gives_the_same_bytes(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(["relayout", v4, one, "--to", "fp8", "-q"], capsys)[0] == 0
    assert run_cli(["relayout", v4, two, "--to", "fp8", "-q", "--workers", "2"], capsys)[0] == 0
    assert _read_all(one) == _read_all(two)


def test_quantize_deepseek_v4_reproduces_the_release_bytes(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """release layout -> dequantize -> quantize --format deepseek-v4: the FP4 bytes (up to the
    sign of zero) and the FP8 bytes come back."""
    bf16, again = tmp_path / "bf16", tmp_path / "again"
    assert run_cli(["dequantize", v4, bf16, "-q"], capsys)[0] == 0
    code, _, err = run_cli(["quantize", bf16, again, "-q", "--format", "deepseek-v4"], capsys)
    assert code == 0, err
    src, got = _read_all(v4), _read_all(again)
    assert set(src) == set(got)
    for name, (tag, raw) in src.items():
        if tag == "I8":  # -0 (code 8) and +0 (code 0) are the same value
            a = np.frombuffer(raw, np.uint8)
            b = np.frombuffer(got[name][1], np.uint8)
            assert got[name][0] == "I8"
            np.testing.assert_array_equal(_sign_of_zero_normalised(b), _sign_of_zero_normalised(a))
        else:
            assert got[name] == (tag, raw), name
    config = json.loads((again / "config.json").read_text())
    assert config["expert_dtype"] == "fp4" and config["quantization_config"]["scale_fmt"] == "ue8m0"


def _sign_of_zero_normalised(packed: np.ndarray) -> np.ndarray:
    lo, hi = packed & 0xF, packed >> 4
    lo = np.where(lo == 8, 0, lo)
    hi = np.where(hi == 8, 0, hi)
    return lo | (hi << 4)


def test_quantize_deepseek_v4_with_fp8_experts_and_bad_options(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bf16 = tmp_path / "bf16"
    assert run_cli(["dequantize", v4, bf16, "-q"], capsys)[0] == 0
    fp8 = tmp_path / "fp8"
    code, _, err = run_cli(
        ["quantize", bf16, fp8, "-q", "--format", "deepseek-v4", "--experts", "fp8"], capsys
    )
    assert code == 0, err
    got = _read_all(fp8)
    assert got["layers.0.ffn.experts.0.w1.weight"][0] == "F8_E4M3"
    assert got["layers.0.ffn.experts.0.w1.scale"][0] == "F8_E8M0"
    assert json.loads((fp8 / "config.json").read_text())["expert_dtype"] == "fp8"
    code, _, err = run_cli(["quantize", bf16, tmp_path / "x", "--experts", "fp4"], capsys)
    assert code == 2 and "--experts" in err


def test_quantize_deepseek_v4_with_workers_gives_the_same_bytes(
    v4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parent's warm-up compiles the FP4 kernel without running it (it once packed the
    unwritten codes and failed)."""
    bf16 = tmp_path / "bf16"
    assert run_cli(["dequantize", v4, bf16, "-q"], capsys)[0] == 0
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["-q", "--format", "deepseek-v4"]
    assert run_cli(["quantize", bf16, one, *args], capsys)[0] == 0
    code, _, err = run_cli(["quantize", bf16, two, *args, "--workers", "2"], capsys)
    assert code == 0, err
    assert _read_all(one) == _read_all(two)
