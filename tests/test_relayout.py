"""``ue8m0 relayout --to mxfp8``: lossless from UE8M0 sources, canonical or repeated scales."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ue8m0
from ckpt_fixtures import all_tensors, run_cli, synthetic_tensors, write_checkpoint
from ue8m0.layouts import as_codes, mx_relayout

FP8 = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
    "model.layers.0.mlp.experts.gate_up.weight",
    "model.layers.0.mlp.down_proj.weight",
)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ue8m0.cli.main import main

    base = tmp_path_factory.mktemp("mx")
    src = write_checkpoint(base / "src", synthetic_tensors(1))
    runs = (
        ["quantize", src, base / "q", "--pad-partial", "-q"],
        ["quantize", src, base / "fp32", "--pad-partial", "--scale-rule", "fp32", "-q"],
        ["relayout", base / "q", base / "mx", "--to", "mxfp8", "-q"],
        ["relayout", base / "q", base / "mxr", "--scales", "repeat", "-q"],
        ["relayout", base / "q", base / "mxs", "--to", "mxfp8", "--engine", "sglang", "-q"],
        ["dequantize", base / "q", base / "q-f32", "--dtype", "f32", "-q"],
        ["dequantize", base / "mx", base / "mx-f32", "--dtype", "f32", "-q"],
        ["dequantize", base / "mxr", base / "mxr-f32", "--dtype", "f32", "-q"],
    )
    for args in runs:
        try:
            main([str(a) for a in args])
        except SystemExit as exc:  # pragma: no cover - only on failure
            assert not exc.code
    names = ("src", "q", "fp32", "mx", "mxr", "mxs", "q-f32", "mx-f32", "mxr-f32")
    return {k: base / k for k in names}


def test_relayout_dequantizes_to_exactly_the_source_values(ckpts: dict[str, Path]) -> None:
    ref = all_tensors(ckpts["q-f32"])
    for out in ("mx-f32", "mxr-f32"):
        got = all_tensors(ckpts[out])
        for name in FP8:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{out} {name}")


def test_canonical_relayout_is_ue8m0_quantize_of_the_values(ckpts: dict[str, Path]) -> None:
    ref, mx = all_tensors(ckpts["q-f32"]), all_tensors(ckpts["mx"])
    for name in FP8:
        want = ue8m0.quantize(ref[name], block=(1, 32), scale_rule="rceil")
        np.testing.assert_array_equal(mx[name].view(np.uint8), want.codes, err_msg=name)
        scale = mx[name + "_scale"]
        assert scale.dtype == np.uint8 and scale.shape == want.scale_codes.shape
        np.testing.assert_array_equal(scale, want.scale_codes, err_msg=name)


def test_repeat_relayout_copies_elements_and_repeats_scale_bytes(ckpts: dict[str, Path]) -> None:
    q, mxr = all_tensors(ckpts["q"]), all_tensors(ckpts["mxr"])
    for name in FP8:
        np.testing.assert_array_equal(mxr[name].view(np.uint8), q[name].view(np.uint8))
        want = mx_relayout(as_codes(q[name + "_scale_inv"]), q[name].shape)
        np.testing.assert_array_equal(mxr[name + "_scale"], want, err_msg=name)


def test_engine_sglang_writes_the_same_bytes_under_weight_scale_inv(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """vLLM reads MXFP8 scales as ``weight_scale`` (the default), SGLang and transformers as
    ``weight_scale_inv``: the two outputs differ in the scale names only, and ``verify``'s
    loader table says which engine reads which."""
    mx, mxs = all_tensors(ckpts["mx"]), all_tensors(ckpts["mxs"])
    renamed = {k.replace(".weight_scale", ".weight_scale_inv"): v for k, v in mx.items()}
    assert sorted(renamed) == sorted(mxs)
    for name, value in mxs.items():
        np.testing.assert_array_equal(value.view(np.uint8), renamed[name].view(np.uint8), name)
    configs = [json.loads((ckpts[k] / "config.json").read_text()) for k in ("mx", "mxs")]
    assert configs[0] == configs[1]
    want = {
        "mx": {"vllm": "loads", "sglang": "refuses", "transformers": "misreads"},
        "mxs": {"vllm": "refuses", "sglang": "loads", "transformers": "loads"},
    }
    for case, verdicts in want.items():
        code, out, _ = run_cli(["verify", ckpts[case], "--json"], capsys)
        table = json.loads(out)["engines"]
        assert code == 0 and {e: table[e]["verdict"] for e in verdicts} == verdicts, case
        code, out, _ = run_cli(["inspect", ckpts[case], "--json"], capsys)
        title = json.loads(out)["format"]
        assert code == 0
        assert title.startswith("MXFP8 for " + ("vLLM" if case == "mx" else "SGLang")), title


def test_mxfp8_config_verify_and_inspect(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    qc = json.loads((ckpts["mx"] / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "mxfp8" and qc["weight_block_size"] == [1, 32]
    assert qc["scale_fmt"] == "ue8m0" and "lm_head" in qc["modules_to_not_convert"]
    code, out, _ = run_cli(["verify", ckpts["mx"], "--against", ckpts["q"], "--json"], capsys)
    assert code == 0 and json.loads(out)["passed"]
    code, out, _ = run_cli(["inspect", ckpts["mx"], "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["format"].startswith("MXFP8") and info["blocks"] == [[1, 32]]


def test_non_power_of_two_sources_are_requantized_and_listed(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["relayout", ckpts["fp32"], tmp_path / "mx", "--dry-run"], capsys)
    assert code == 0 and "4 tensors requantized (lossy)" in out
    code, out, err = run_cli(["relayout", ckpts["fp32"], tmp_path / "mx", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)["report"]
    assert sorted(report["requantized_tensors"]) == sorted(FP8)
    assert 0.01 < report["total"]["rel_frobenius"] < 0.05
    assert run_cli(["verify", tmp_path / "mx", "--against", ckpts["fp32"], "-q"], capsys)[0] == 0
