"""Resume: a run killed with SIGKILL mid-way resumes and gives byte-identical output; reruns
with other parameters are refused; a corrupted finished shard is redone; workers agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ckpt_fixtures import BF16, run_cli, visible_files, write_checkpoint
from ue8m0.checkpoint.runner import STOP_AFTER_ENV
from ue8m0.checkpoint.source import MANIFEST_NAME


def _four_shards(root: Path) -> Path:
    rng = np.random.default_rng(3)
    shards = {
        f"model-0000{i}-of-00004.safetensors": {
            f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((256, 384)) * 0.02).astype(
                BF16
            ),
            f"model.layers.{i}.input_layernorm.weight": np.ones(384, BF16),
        }
        for i in range(1, 5)
    }
    return write_checkpoint(root, shards)


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ue8m0.cli.main", *map(str, args)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_run_resumes_byte_identical(tmp_path: Path) -> None:
    src = _four_shards(tmp_path / "src")
    dst = tmp_path / "killed"
    proc = _cli("quantize", src, dst, "-q", env={STOP_AFTER_ENV: "2"})
    manifest = dst / MANIFEST_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    else:  # pragma: no cover
        proc.kill()
        pytest.fail("the run never recorded two shards")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (dst / "model.safetensors.index.json").exists()  # does not look complete
    assert len(list(dst.glob("*.safetensors"))) == 2

    rerun = _cli("quantize", src, dst, "--json")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    summary = json.loads(out)
    assert summary["shards_resumed"] == 2 and summary["shards_written"] == 2

    fresh = _cli("quantize", src, tmp_path / "fresh", "-q")
    fresh.communicate(timeout=120)
    assert fresh.returncode == 0
    assert visible_files(dst) == visible_files(tmp_path / "fresh")
    assert json.loads(manifest.read_text())["complete"] is True


def test_rerun_with_other_parameters_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _four_shards(tmp_path / "src")
    dst = tmp_path / "q"
    assert run_cli(["quantize", src, dst, "-q"], capsys)[0] == 0
    before = visible_files(dst)
    code, _, err = run_cli(["quantize", src, dst, "-q", "--scale-rule", "fp32"], capsys)
    assert code == 2 and "different parameters (scale_rule)" in err
    assert visible_files(dst) == before
    # same parameters: nothing to redo
    code, out, _ = run_cli(["quantize", src, dst, "--json"], capsys)
    assert code == 0 and json.loads(out)["shards_resumed"] == 4


def test_corrupted_finished_shard_is_redone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _four_shards(tmp_path / "src")
    dst = tmp_path / "q"
    assert run_cli(["quantize", src, dst, "-q"], capsys)[0] == 0
    good = visible_files(dst)
    shard = dst / "model-00003-of-00004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, _ = run_cli(["quantize", src, dst, "--json"], capsys)
    assert code == 0 and json.loads(out)["shards_written"] == 1
    assert visible_files(dst) == good


def test_workers_give_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _four_shards(tmp_path / "src")
    assert run_cli(["quantize", src, tmp_path / "w1", "-q"], capsys)[0] == 0
    assert run_cli(["quantize", src, tmp_path / "w2", "-q", "--workers", "2"], capsys)[0] == 0
    assert visible_files(tmp_path / "w1") == visible_files(tmp_path / "w2")
    assert (
        run_cli(["dequantize", tmp_path / "w2", tmp_path / "d2", "-q", "--workers", "2"], capsys)[0]
        == 0
    )
    assert run_cli(["dequantize", tmp_path / "w2", tmp_path / "d1", "-q"], capsys)[0] == 0
    assert visible_files(tmp_path / "d1") == visible_files(tmp_path / "d2")


def test_worker_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _four_shards(tmp_path / "src")
    from ckpt_fixtures import save

    bad = np.zeros((256, 384), BF16)
    bad[5, 5] = np.nan
    save(
        src / "model-00002-of-00004.safetensors",
        {
            "model.layers.2.mlp.up_proj.weight": bad,
            "model.layers.2.input_layernorm.weight": np.ones(384, BF16),
        },
    )
    code, _, err = run_cli(["quantize", src, tmp_path / "q", "-q", "--workers", "2"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "model.layers.2.mlp.up_proj.weight" in err and "block (0, 0)" in err
    assert not (tmp_path / "q" / "model.safetensors.index.json").exists()
