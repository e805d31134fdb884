"""``ue8m0 plan``: table, JSON, calibration, chip listing, plots and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ue8m0.cli.main import cli, main
from ue8m0.plan.presets import load_model


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["plan", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_json_has_model_params_and_estimates_per_chip_and_format() -> None:
    out = json.loads(
        run(
            "--model",
            "DeepSeek-V3.1",
            "--chip",
            "H20,b200",
            "--format",
            "bf16,fp8",
            "--batch",
            "1,64",
            "--num-chips",
            "8",
            "--json",
        )
    )
    model = load_model("deepseek-v3.1")
    assert out["model"]["total_params"] == model.total_params
    assert out["model"]["active_params"] == model.active_params
    assert out["model"]["kv_bytes_per_token"]["bf16"] == 70272
    assert len(out["estimates"]) == 2 * 2 * 2
    by_key = {(e["chip"], e["format"], e["batch"]): e for e in out["estimates"]}
    assert by_key[("h20", "bf16", 1)]["fits"] is False
    assert by_key[("h20", "bf16", 1)]["min_chips"] == 16
    assert by_key[("h20", "bf16", 1)]["decode_tok_s"] is None
    fp8 = by_key[("b200", "fp8", 64)]
    assert fp8["fits"] and fp8["decode_tok_s_per_chip"] > 0 and fp8["upper_bound"]
    assert fp8["compute"] == "fp8"
    assert "Upper bounds" in out["upper_bound"]


def test_table_output_and_weight_only_label() -> None:
    out = run("--model", "qwen2.5-7b", "--chip", "910b", "--format", "bf16,fp8")
    assert "Qwen2.5-7B: 7.6 B parameters" in out
    assert "bf16 (w-only)" in out
    assert "no FP8 math" in out
    assert "Upper bounds" in out


def test_config_json_model(tmp_path: Path) -> None:
    config = {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 1000,
        "intermediate_size": 512,
        "_name_or_path": "tiny",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = json.loads(run("--model", str(path), "--chip", "rtx4090", "--json"))
    assert out["model"]["name"] == "tiny"
    assert out["estimates"][0]["num_chips"] == 1


def test_calibrate_and_list_chips() -> None:
    out = run("--calibrate")
    assert "cm384-prefill" in out and "RATIO" in out
    points = json.loads(run("--calibrate", "--json"))["points"]
    assert {p["id"] for p in points} >= {"cm384-prefill", "cm384-decode-50ms"}
    chips = json.loads(run("--list-chips", "--json"))
    assert len(chips["chips"]) == 32
    h20 = next(c for c in chips["chips"] if c["key"] == "h20")
    assert h20["bf16_tflops"] == {"value": 148, "src": "AC; H20P; LLMR; AIC-H20", "conf": "high"}
    assert "ascend950pr" in run("--list-chips")


def test_plots_are_written(tmp_path: Path) -> None:
    out = run(
        "--model", "llama-3.1-8b", "--chip", "h20,l20", "--batch", "1,16", "--plot", str(tmp_path)
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["plan_decode.png", "plan_roofline_h20.png", "plan_roofline_l20.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    assert "plan_decode.png" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "deepseek-v3.1", "--chip", "v100"], "unknown chip 'v100'"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--model", "llama-3.1-8b", "--format", "fp6"], "unknown format 'fp6'"),
        (["--model", "llama-3.1-8b", "--batch", "x"], "--batch must be integers"),
        ([], "--model is required"),
    ],
)
def test_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err
