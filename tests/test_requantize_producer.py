"""A real producer: an FP8_BLOCK checkpoint written by compressed-tensors' own compressor
(BF16 amax/448 block scales, ``weight_scale``, ``config_groups``) read by every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckpt_fixtures import all_tensors, ct_fp8_block_checkpoint, run_cli

WEIGHTS = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
)


@pytest.fixture(scope="module")
def producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct_fp8_block_checkpoint(tmp_path_factory.mktemp("ct") / "fp8-block")


def test_the_producer_wrote_what_we_expect(producer: Path) -> None:
    tensors = all_tensors(producer)
    for name in WEIGHTS:
        assert tensors[name].dtype.name == "float8_e4m3fn"
        assert tensors[name + "_scale"].dtype.name == "bfloat16"
    qc = json.loads((producer / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"


def test_inspect_verify_dequantize_read_it(
    producer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", producer, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["format"] == "compressed-tensors FP8 block, non-power-of-two scales"
    assert info["blocks"] == [[128, 128]]
    code, out, _ = run_cli(["verify", producer, "--json"], capsys)
    assert code == 0 and json.loads(out)["passed"]
    assert run_cli(["dequantize", producer, tmp_path / "bf16", "-q"], capsys)[0] == 0
    assert not [n for n, a in all_tensors(tmp_path / "bf16").items() if a.dtype.itemsize == 1]


@pytest.mark.parametrize("search", ["none", "mse"])
def test_requantize_output_dequantizes_within_the_reported_error(
    producer: Path, tmp_path: Path, search: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ue8m0"
    args = ["requantize", producer, out, "--scale-search", search, "--json"]
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(text)["report"]
    assert run_cli(["verify", out, "--against", producer, "-q"], capsys)[0] == 0
    for ckpt in (producer, out):
        assert (
            run_cli(
                ["dequantize", ckpt, tmp_path / f"{ckpt.name}-f32", "--dtype", "f32", "-q"], capsys
            )[0]
            == 0
        )
    ref = all_tensors(tmp_path / f"{producer.name}-f32")
    got = all_tensors(tmp_path / f"{out.name}-f32")
    rows = {r["name"]: r for r in report["tensors"]}
    assert set(rows) == set(WEIGHTS)
    for name in WEIGHTS:
        d = got[name].astype(np.float64) - ref[name]
        assert np.abs(d).max() <= rows[name]["max_abs_error"]
        rel = np.linalg.norm(d) / np.linalg.norm(ref[name].astype(np.float64))
        assert rel == pytest.approx(rows[name]["rel_frobenius"], rel=1e-9)
        assert 0 < rel < 0.05
    total = report["total"]
    print(
        f"compressed-tensors FP8_BLOCK -> UE8M0 ({search}): rel. Frobenius {total['rel_frobenius']:.5f}"
    )
