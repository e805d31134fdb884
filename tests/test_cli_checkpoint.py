"""The checkpoint commands as a user runs them: help, demo, inspect, verify, JSON output."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from ckpt_fixtures import run_cli, synthetic_tensors, write_checkpoint
from ue8m0.checkpoint.safetensors import SafetensorsFile


@pytest.mark.parametrize(
    "command", ["quantize", "dequantize", "verify", "inspect", "demo", "requantize", "relayout"]
)
def test_help_shows_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    assert "Examples:" in out and f"ue8m0 {command}" in out


def test_quantize_help_says_loaders_differ_on_partial_blocks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run_cli(["quantize", "--help"], capsys)
    assert "--pad-partial" in out and "silently misreads" in out


def test_demo_runs_the_pipeline_on_minilm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["demo", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    for rule in ("rceil", "fp32"):
        r = result["rules"][rule]
        assert r["verify_passed"] and len(r["tensors"]) == 37
        assert 0.02 < r["total"]["rel_frobenius"] < 0.03
        assert (tmp_path / f"fp8-{rule}" / "model.safetensors.index.json").exists()
        assert (tmp_path / f"fp8-{rule}-bf16" / "tokenizer.json").exists()
    qc = json.loads((tmp_path / "fp8-rceil" / "config.json").read_text())["quantization_config"]
    assert qc["scale_fmt"] == "ue8m0"
    # the UE8M0 pipeline is exact through BF16: dequantized = fp8 * 2^k, no rounding
    with (
        SafetensorsFile(tmp_path / "fp8-rceil" / "model.safetensors") as q,
        SafetensorsFile(tmp_path / "fp8-rceil-bf16" / "model.safetensors") as d,
    ):
        name = "encoder.layer.0.attention.self.query.weight"
        w = q.get(name).astype(np.float32)
        s = np.repeat(np.repeat(q.get(name + "_scale_inv"), 128, 0), 128, 1)
        np.testing.assert_array_equal(d.get(name).astype(np.float32), w * s)


def test_inspect_and_verify_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    assert run_cli(["quantize", src, tmp_path / "q", "-q", "--scale-dtype", "e8m0"], capsys)[0] == 0
    code, out, _ = run_cli(["inspect", tmp_path / "q", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["format"].startswith("DeepSeek FP8 block")
    assert info["scale_stats"]["power_of_two_fraction"] == 1.0
    assert info["by_role"]["fp8 weight"]["tensors"] == 3
    assert info["scale_stats"]["dtypes"] == {"F8_E8M0": 3}
    code, out, _ = run_cli(["inspect", src], capsys)
    assert code == 0 and "high precision" in out
    code, out, _ = run_cli(["verify", tmp_path / "q", "--against", src, "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["passed"] and len(report["checks"]) == 8


def test_verify_finds_broken_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    q = tmp_path / "q"
    assert run_cli(["quantize", src, q, "-q"], capsys)[0] == 0
    # a wrong total_size, then a config that lost its quantization_config
    index = json.loads((q / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] += 1
    (q / "model.safetensors.index.json").write_text(json.dumps(index))
    code, out, _ = run_cli(["verify", q, "--json"], capsys)
    failed = {c["check"] for c in json.loads(out)["checks"] if not c["passed"]}
    assert code == 1 and failed == {"index <-> shards complete and consistent"}
    config = json.loads((q / "config.json").read_text())
    del config["quantization_config"]
    (q / "config.json").write_text(json.dumps(config))
    code, out, _ = run_cli(["verify", q], capsys)
    assert code == 1 and "FP8 tensors but no quantization_config" in out


def test_verify_against_detects_wrong_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = synthetic_tensors()
    src = write_checkpoint(tmp_path / "src", shards)
    assert run_cli(["quantize", src, tmp_path / "q", "-q"], capsys)[0] == 0
    other = synthetic_tensors(seed=1)
    changed = write_checkpoint(
        tmp_path / "src2",
        {
            k: {
                n: (a if n != "model.layers.0.mlp.down_proj.weight" else other[k][n])
                for n, a in v.items()
            }
            for k, v in shards.items()
        },
    )
    code, out, _ = run_cli(["verify", tmp_path / "q", "--against", changed], capsys)
    assert code == 1 and "model.layers.0.mlp.down_proj.weight" in out and "the bound" in out


def test_progress_bars_only_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ue8m0.checkpoint.options import QuantizeOptions
    from ue8m0.checkpoint.plan_quantize import plan_quantize
    from ue8m0.checkpoint.runner import Progress, run_plan
    from ue8m0.checkpoint.source import open_checkpoint
    from ue8m0.cli._output import BarProgress, make_progress

    assert type(make_progress(False, False)) is Progress  # stderr is captured: not a TTY
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    ckpt = open_checkpoint(src)
    plan = plan_quantize(ckpt, QuantizeOptions().validated())
    threads = set(threading.enumerate())
    result = run_plan(ckpt, plan, tmp_path / "q", 2, BarProgress())
    err = capsys.readouterr().err
    assert "2 shards" in err and "B/s" in err
    summary = result.summary()
    assert summary["shards_written"] == 2 and summary["peak_rss_mb"] > 10
    # the bars start no thread (tqdm's monitor would make the next run spawn workers)
    assert set(threading.enumerate()) <= threads


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--format", "compressed-tensors", "--fmt", "e5m2"], "--fmt: compressed-tensors"),
        (["--format", "mxfp8", "--scale-dtype", "f32"], "--scale-dtype: MXFP8"),
        (["--format", "mxfp8", "--block", "128x128"], "--block: MXFP8"),
        (["--scale-rule", "fp32", "--scale-dtype", "e8m0"], "--scale-dtype: e8m0/u8"),
        (["--include", "("], "--include/--exclude: bad regex"),
    ],
)
def test_option_conflicts_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, _, err = run_cli(["quantize", src, tmp_path / "q", *args], capsys)
    assert code == 2 and err.startswith(f"ue8m0: error: {line}"), err
    assert not (tmp_path / "q").exists()


def test_summary_line_of_a_small_run_has_binary_units_and_a_real_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    code, out, _ = run_cli(["quantize", src, tmp_path / "q"], capsys)
    line = out.strip().splitlines()[-1]
    assert code == 0 and "0.00 GB/s" not in line and " MB" not in line
    assert re.search(r"\(\d+(\.\d+)? (B|KiB|MiB|GiB)/s\), peak RSS \d+\.\d\d MiB$", line), line
    code, out, _ = run_cli(["quantize", src, tmp_path / "q"], capsys)  # all resumed
    assert code == 0 and "(nothing to do)" in out


def test_a_single_file_source_warns_that_the_output_has_no_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors(), index=False)
    shard = sorted(src.glob("*.safetensors"))[0]
    code, _, err = run_cli(["quantize", shard, tmp_path / "q"], capsys)
    assert code == 0 and "has no config.json" in err and "warning" in err
    code, _, err = run_cli(["quantize", src, tmp_path / "q2"], capsys)
    assert code == 0 and "config.json" not in err


def test_every_output_carries_a_model_card_and_a_gitignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_checkpoint(tmp_path / "src", synthetic_tensors())
    (src / "README.md").write_text("---\nlicense: mit\n---\n# The original card\n")
    assert run_cli(["quantize", src, tmp_path / "q", "-q", "--scale-dtype", "e8m0"], capsys)[0] == 0
    assert run_cli(["requantize", tmp_path / "q", tmp_path / "r", "-q"], capsys)[0] == 0
    assert run_cli(["dequantize", tmp_path / "q", tmp_path / "d", "-q"], capsys)[0] == 0
    for out, command in (("q", "quantize"), ("r", "requantize"), ("d", "dequantize")):
        card = (tmp_path / out / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: transformers\n") and "license: mit" in card
        assert f"`ue8m0 {command}`" in card and "## Error" in card
        assert card.count("# The original card") == 1  # kept below ours, once
        ignored = (tmp_path / out / ".gitignore").read_text().splitlines()
        assert ".ue8m0-manifest.json" in ignored and ".ue8m0-stats/" in ignored
    assert "Kept as they are:" in (tmp_path / "q" / "README.md").read_text()
    assert "| vllm | loads | - |" in (tmp_path / "q" / "README.md").read_text()
    assert "relative Frobenius error 0" in (tmp_path / "r" / "README.md").read_text()
