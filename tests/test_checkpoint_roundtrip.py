"""quantize -> dequantize round trips on small synthetic checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ue8m0
from ckpt_fixtures import BF16, run_cli, save, synthetic_tensors, write_checkpoint
from ue8m0.checkpoint.safetensors import SafetensorsFile, read_header
from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter
from ue8m0.errors import CheckpointError

QUANTIZED = {
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
    "model.layers.0.mlp.experts.gate_up.weight",
    "model.layers.0.mlp.down_proj.weight",
}


def _all_tensors(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for shard in sorted(root.glob("*.safetensors")):
        with SafetensorsFile(shard) as f:
            out.update({k: np.array(f.get(k)) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rt")
    src = write_checkpoint(base / "src", synthetic_tensors())
    from ue8m0.cli.main import main

    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for args in (
        ["quantize", src, base / "q", "--pad-partial", "-q"],
        ["dequantize", base / "q", base / "dq", "-q"],
    ):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:  # pragma: no cover - only on failure
            assert not exc.code
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # SRC never written
    return {"src": src, "q": base / "q", "dq": base / "dq"}


def test_quantized_bytes_equal_ue8m0_quantize(converted: dict[str, Path]) -> None:
    src, q = _all_tensors(converted["src"]), _all_tensors(converted["q"])
    for name in QUANTIZED:
        ref = ue8m0.quantize(src[name], block=(128, 128), scale_rule="rceil")
        assert q[name].dtype == ml_dtypes.float8_e4m3fn
        np.testing.assert_array_equal(q[name].view(np.uint8), ref.codes)
        np.testing.assert_array_equal(q[name + "_scale_inv"], ref.scale)
    kept = set(src) - QUANTIZED
    for name in kept:
        np.testing.assert_array_equal(q[name].view(np.uint8), src[name].view(np.uint8))
        assert name + "_scale_inv" not in q
    assert q["model.layers.0.mlp.experts.gate_up.weight_scale_inv"].shape == (3, 2, 3)
    assert q["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (2, 2)


def test_dequantized_equals_dequantize_of_quantize(converted: dict[str, Path]) -> None:
    src, dq = _all_tensors(converted["src"]), _all_tensors(converted["dq"])
    assert set(dq) == set(src)
    for name in QUANTIZED:
        ref = ue8m0.dequantize(ue8m0.quantize(src[name]), dtype=BF16)
        assert dq[name].dtype == BF16
        np.testing.assert_array_equal(dq[name].view(np.uint16), ref.view(np.uint16))


def test_config_index_and_copied_files(converted: dict[str, Path]) -> None:
    q, dq = converted["q"], converted["dq"]
    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fp8" and qc["fmt"] == "e4m3" and qc["scale_fmt"] == "ue8m0"
    assert qc["weight_block_size"] == [128, 128] and qc["activation_scheme"] == "dynamic"
    assert "lm_head" in qc["modules_to_not_convert"]
    assert "model.embed_tokens" in qc["modules_to_not_convert"]
    assert "quantization_config" not in json.loads((dq / "config.json").read_text())
    for root in (q, dq):
        index = json.loads((root / "model.safetensors.index.json").read_text())
        tensors = _all_tensors(root)
        assert set(index["weight_map"]) == set(tensors)
        assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
        assert (root / "tokenizer.json").exists() and (root / "modeling_custom.py").exists()
        for shard in root.glob("*.safetensors"):
            assert read_header(shard)[1]["format"] == "pt"


def test_safetensors_library_reads_every_output(converted: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    for root in (converted["q"], converted["dq"]):
        ours = _all_tensors(root)
        for shard in root.glob("*.safetensors"):
            for name, t in load_file(str(shard)).items():
                expect = ours[name]
                assert tuple(t.shape) == expect.shape
                raw = t.contiguous().view(torch.uint8).numpy().reshape(-1)
                np.testing.assert_array_equal(raw, expect.reshape(-1).view(np.uint8))


def test_verify_passes_against_source(
    converted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["verify", converted["q"], "--against", converted["src"]], capsys)
    assert code == 0, out
    assert "all checks passed" in out


def test_scale_in_another_shard_and_byte_scales(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A U8/E8M0 scale stored in another shard than its weight (DeepSeek-V3 PR #2 case)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((256, 384)) * 0.1).astype(np.float32)
    x = (rng.standard_normal((2, 130, 256)) * 5).astype(np.float32)
    qw, qx = ue8m0.quantize(w), ue8m0.quantize(x)
    assert qw.scale_codes is not None and qx.scale_codes is not None
    shards = {
        "a.safetensors": {"l.weight": qw.data, "e.weight_scale": qx.scale_codes},
        "b.safetensors": {
            "l.weight_scale_inv": qw.scale_codes.view(ml_dtypes.float8_e8m0fnu),
            "e.weight": qx.data,
        },
    }
    src = write_checkpoint(
        tmp_path / "src",
        shards,
        config={"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
    )
    code, _, err = run_cli(["dequantize", src, tmp_path / "dq", "-q"], capsys)
    assert code == 0, err
    out = _all_tensors(tmp_path / "dq")
    assert set(out) == {"l.weight", "e.weight"}
    np.testing.assert_array_equal(
        out["l.weight"].view(np.uint16), ue8m0.dequantize(qw, dtype=BF16).view(np.uint16)
    )
    np.testing.assert_array_equal(
        out["e.weight"].view(np.uint16), ue8m0.dequantize(qx, dtype=BF16).view(np.uint16)
    )


@pytest.mark.parametrize("scale_dtype,tag", [("e8m0", "F8_E8M0"), ("u8", "U8")])
def test_byte_scale_dtypes_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scale_dtype: str, tag: str
) -> None:
    w = (np.random.default_rng(2).standard_normal((256, 256)) * 0.02).astype(BF16)
    src = write_checkpoint(tmp_path / "src", {"model.safetensors": {"x.weight": w}}, index=False)
    # U8 scales are misread by vLLM and SGLang: only written when declared not for serving
    serving = ["--not-for-serving"] if scale_dtype == "u8" else []
    code, _, err = run_cli(
        ["quantize", src, tmp_path / "q", "--scale-dtype", scale_dtype, "-q", *serving], capsys
    )
    assert code == 0, err
    infos = read_header(tmp_path / "q" / "model.safetensors")[0]
    assert infos["x.weight_scale_inv"].dtype == tag
    with SafetensorsFile(tmp_path / "q" / "model.safetensors") as f:
        codes = f.get("x.weight_scale_inv").view(np.uint8)
    np.testing.assert_array_equal(codes, ue8m0.quantize(w).scale_codes)
    assert run_cli(["dequantize", tmp_path / "q", tmp_path / "dq", "-q"], capsys)[0] == 0
    with SafetensorsFile(tmp_path / "dq" / "model.safetensors") as f:
        got = f.get("x.weight").view(np.uint16)
    np.testing.assert_array_equal(got, ue8m0.dequantize(ue8m0.quantize(w), BF16).view(np.uint16))


def test_fp32_rule_writes_no_scale_fmt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, _, err = run_cli(["quantize", src, tmp_path / "q", "--scale-rule", "fp32", "-q"], capsys)
    assert code == 0, err
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "scale_fmt" not in qc
    # without --pad-partial the 192-row weight stays BF16 and is listed
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa" in qc["modules_to_not_convert"]
    code, out, _ = run_cli(["verify", tmp_path / "q", "--against", src], capsys)
    assert code == 0, out


def test_dry_run_writes_nothing_and_lists_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, out, _ = run_cli(
        ["quantize", src, tmp_path / "q", "--dry-run", "--exclude", r"down_proj"], capsys
    )
    assert code == 0
    assert not (tmp_path / "q").exists()
    assert "lm_head.weight" in out and "output head" in out and "--exclude" in out
    assert "2 shards" in out
    code, out, _ = run_cli(
        [
            "quantize",
            src,
            tmp_path / "q",
            "--dry-run",
            "--json",
            "--include",
            "lm_head",
            "--pad-partial",
        ],
        capsys,
    )
    plan = json.loads(out)
    converted = {t["name"] for t in plan["tensors_detail"] if t["action"] == "quantize"}
    assert converted == {"lm_head.weight"}


def test_writer_refuses_incomplete_and_leaves_no_file(tmp_path: Path) -> None:
    spec = [OutSpec("a", "F32", (4,)), OutSpec("b", "U8", (3,))]
    with (
        pytest.raises(CheckpointError, match="incomplete"),
        SafetensorsWriter(tmp_path / "x.safetensors", spec) as out,
    ):
        out.write("a", np.zeros(4, np.float32))
    assert list(tmp_path.iterdir()) == []
    with (
        pytest.raises(CheckpointError, match="more bytes"),
        SafetensorsWriter(tmp_path / "x.safetensors", spec) as out,
    ):
        out.write("b", np.zeros(4, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_reader_reads_what_safetensors_writes(tmp_path: Path) -> None:
    arrays = {
        "f8": np.arange(12, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).reshape(3, 4),
        "bf": np.arange(6, dtype=np.float32).astype(BF16).reshape(2, 3),
        "e": np.ones((2, 2), ml_dtypes.float8_e8m0fnu),
        "empty": np.zeros((0, 3), np.float32),
    }
    save(tmp_path / "t.safetensors", arrays)
    with SafetensorsFile(tmp_path / "t.safetensors") as f:
        for name, arr in arrays.items():
            got = f.get(name)
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got.view(np.uint8), arr.view(np.uint8))
            np.testing.assert_array_equal(f.read(name).view(np.uint8), arr.view(np.uint8))


def test_dequantize_to_f32_and_dry_run(
    converted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["dequantize", converted["q"], tmp_path / "f", "--dry-run"], capsys)
    assert code == 0 and "dequantize" in out and "drop" in out and not (tmp_path / "f").exists()
    assert (
        run_cli(["dequantize", converted["q"], tmp_path / "f", "-q", "--dtype", "f32"], capsys)[0]
        == 0
    )
    src, got = _all_tensors(converted["src"]), _all_tensors(tmp_path / "f")
    for name in QUANTIZED:
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], ue8m0.dequantize(ue8m0.quantize(src[name])))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--scale-dtype", "u8"], "--scale-dtype: vLLM and SGLang copy U8 scale bytes"),
        (["--fmt", "e5m2"], "--fmt: vLLM and SGLang ignore fmt"),
    ],
)
def test_what_serving_loaders_misread_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, _, err = run_cli(["quantize", src, tmp_path / "q", *args], capsys)
    assert code == 2 and err.startswith(f"ue8m0: error: {line}"), err
    assert "(--not-for-serving writes it anyway)" in err and not (tmp_path / "q").exists()
    code, _, err = run_cli(["quantize", src, tmp_path / "q", *args, "--not-for-serving"], capsys)
    assert code == 0, err
