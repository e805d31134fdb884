"""Hostile and unlucky checkpoints, destinations and runs (issue 16): each ends in one line on
stderr with exit 2 (or a correct output), never a traceback, a hang (60 s timeouts), a signal
death, or a destination that looks complete (``model.safetensors.index.json``) but is not.

The reader's own refusals (malformed headers, FIFO shards, truncation, JSON limits) are tested
in ``test_adversarial_reader.py``; this suite covers what happens around the reader: the DST
lock, resume fingerprints, reserved and colliding names, the opener, ``report --out``, escaped
output, ``verify`` against the manifest and the exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from ckpt_fixtures import BF16, save, visible_files, write_checkpoint
from ue8m0.checkpoint.dstlock import LOCK_NAME
from ue8m0.checkpoint.runner import STOP_AFTER_ENV
from ue8m0.checkpoint.source import INDEX_NAME, MANIFEST_NAME
from ue8m0.checkpoint.srccrc import HashingFile
from ue8m0.checkpoint.writer import TMP_SUFFIX, temp_path

FORGED = "ue8m0: all checks passed"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "UE8M0_DEBUG"}
    return {**env, **(extra or {})}


def _cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _popen(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ue8m0.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one error line (without its prefix) of a run that must have failed with ``code``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ue8m0: error: "), result.stderr
    return lines[0].removeprefix("ue8m0: error: ")


def _not_complete(dst: Path) -> None:
    """Nothing in ``dst`` looks like a finished checkpoint, and no temporary file is left."""
    assert not (dst / INDEX_NAME).exists()
    if dst.is_dir():
        assert not list(dst.rglob(f"*{TMP_SUFFIX}")), sorted(dst.rglob("*"))


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.02).astype(BF16)


def _model(root: Path, shards: int = 2, rows: int = 256, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return write_checkpoint(
        root,
        {
            f"model-{i:05d}-of-{shards:05d}.safetensors": {
                f"model.layers.{i}.mlp.up_proj.weight": _w(rng, rows, 256),
                f"model.layers.{i}.input_layernorm.weight": np.ones(256, BF16),
            }
            for i in range(1, shards + 1)
        },
    )


def _edit_index(root: Path, edit: Any) -> None:
    path = root / INDEX_NAME
    index = json.loads(path.read_text())
    path.write_text(json.dumps(edit(index)))


# ------------------------------------------------------------------ 1. complete-looking outputs


def test_index_naming_a_shard_like_the_manifest_is_refused(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    (src / "model-00001-of-00001.safetensors").rename(src / MANIFEST_NAME)
    _edit_index(
        src, lambda ix: {**ix, "weight_map": dict.fromkeys(ix["weight_map"], MANIFEST_NAME)}
    )
    message = _one_line(_cli("quantize", src, tmp_path / "dst"))
    assert message == (
        f"{src / INDEX_NAME}: shard name '{MANIFEST_NAME}' is hidden (ue8m0 keeps its own "
        "files under hidden names): refused"
    )
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("name", ["config.json", "README.md", f"x{TMP_SUFFIX}", ".ue8m0-lock"])
def test_index_naming_a_shard_like_an_output_file_is_refused(tmp_path: Path, name: str) -> None:
    src = _model(tmp_path / "src", shards=1)
    _edit_index(src, lambda ix: {**ix, "weight_map": dict.fromkeys(ix["weight_map"], name)})
    message = _one_line(_cli("quantize", src, tmp_path / "dst"))
    assert message.startswith(f"{src / INDEX_NAME}: shard name {name!r} ")
    assert message.endswith(": refused")


def test_output_name_collision_across_shards_is_refused_before_writing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = write_checkpoint(
        tmp_path / "src",
        {
            "a.safetensors": {"model.layers.0.mlp.up_proj.weight": _w(rng, 256, 256)},
            "b.safetensors": {"model.layers.0.mlp.up_proj.weight_scale_inv": _w(rng, 2, 2)},
        },
    )
    dst = tmp_path / "dst"
    message = _one_line(_cli("quantize", src, dst))
    scale = "model.layers.0.mlp.up_proj.weight_scale_inv"
    assert message.startswith(f"{src / 'b.safetensors'}: tensor {scale!r}: output tensor ")
    assert "would be written twice" in message and "a.safetensors" in message
    assert not dst.exists()


def test_a_second_run_into_the_same_dst_is_refused_naming_the_holder(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=3)
    dst = tmp_path / "dst"
    first = _popen("quantize", src, dst, "-q", env={STOP_AFTER_ENV: "1"})
    try:
        _wait_for_shards(dst, 1, first)
        message = _one_line(_cli("quantize", src, dst, "--scale-rule", "fp32"))
        assert message.startswith(f"{dst}: another ue8m0 run (pid {first.pid} on ")
        assert f"is writing into this destination ({LOCK_NAME})" in message
        _not_complete(dst)
        # the first run's files are untouched by the refused one
        assert json.loads((dst / MANIFEST_NAME).read_text())["params"]["scale_rule"] == "rceil"
    finally:
        first.kill()
        first.communicate()
    # the lock of the killed run is the kernel's to drop: the next run takes it and resumes
    rerun = _cli("quantize", src, dst, "--json", timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["shards_resumed"] == 1
    fresh = _cli("quantize", src, tmp_path / "fresh", "-q", timeout=120)
    assert fresh.returncode == 0
    assert visible_files(dst) == visible_files(tmp_path / "fresh")
    assert not (dst / LOCK_NAME).exists() and not list(dst.glob(f"*{TMP_SUFFIX}"))


def _wait_for_shards(dst: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    manifest = dst / MANIFEST_NAME
    while time.monotonic() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the run never recorded its shards")  # pragma: no cover


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    a, b = temp_path(tmp_path / "x.safetensors"), temp_path(tmp_path / "x.safetensors")
    assert a != b
    for t in (a, b):
        assert t.name.startswith(".x.safetensors.") and t.name.endswith(TMP_SUFFIX)


def test_source_changed_in_place_is_converted_again_not_skipped(tmp_path: Path) -> None:
    """Same size, same mtime, other bytes: the CRC of what was read decides; the resumed DST is
    the fresh conversion of the new source, never a mix."""
    src = _model(tmp_path / "src", shards=3)
    dst = tmp_path / "dst"
    assert _cli("quantize", src, dst, "-q", timeout=120).returncode == 0
    shard = src / "model-00002-of-00003.safetensors"
    st = shard.stat()
    rng = np.random.default_rng(9)
    save(
        shard,
        {
            "model.layers.2.mlp.up_proj.weight": _w(rng, 256, 256),
            "model.layers.2.input_layernorm.weight": np.ones(256, BF16),
        },
    )
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert shard.stat().st_size == st.st_size
    rerun = _cli("quantize", src, dst, "--json", timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["shards_written"] == 1 and summary["shards_resumed"] == 2
    assert _cli("quantize", src, tmp_path / "fresh", "-q", timeout=120).returncode == 0
    assert visible_files(dst) == visible_files(tmp_path / "fresh")
    verify = _cli("verify", dst, "--against", src, timeout=120)
    assert verify.returncode == 0, verify.stdout


def test_the_manifest_records_the_crc_of_each_source_shard(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=2)
    dst = tmp_path / "dst"
    assert _cli("quantize", src, dst, "-q").returncode == 0
    shards = json.loads((dst / MANIFEST_NAME).read_text())["shards"]
    for name, record in shards.items():
        crc = f"{zlib.crc32((src / name).read_bytes()):08x}"
        assert record["source"]["crc32"] == crc
        assert record["source"]["size"] == (src / name).stat().st_size
    assert not (dst / ".ue8m0-sources").exists()  # moved into the manifest


@pytest.mark.parametrize(
    "reads",
    [
        [(0, 1000)],
        [(500, 1000), (0, 100)],  # out of order, with gaps
        [(0, 600), (300, 900), (300, 900), (100, 200)],  # overlaps and repeats
        [],
    ],
)
def test_hashing_file_crc_is_the_crc_of_the_file(tmp_path: Path, reads: list[Any]) -> None:
    path = tmp_path / "a.safetensors"
    save(path, {"w": np.arange(1024, dtype=np.float32).reshape(32, 32)})
    with HashingFile(path) as f:
        for lo, hi in reads:
            f.read_bytes("w", lo, hi)
        assert f.file_crc() == f"{zlib.crc32(path.read_bytes()):08x}"


# ------------------------------------------------------------------ 2. report's path checks


def test_report_refuses_a_symlink_out_of_the_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    outside = tmp_path / "outside.safetensors"
    save(outside, {"w": np.ones((4, 4), np.float32)})
    os.symlink(outside, src / "model.safetensors")
    message = _one_line(_cli("report", src))
    assert message.startswith(f"{src / 'model.safetensors'}: shard resolves to ")


def test_report_refuses_a_tensor_in_two_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save(src / name, {"w": np.ones((4, 4), np.float32)})
    assert _one_line(_cli("report", src)) == (
        f"{src / 'b.safetensors'}: tensor 'w': tensor is also in a.safetensors"
    )


def test_report_out_into_the_source_or_through_a_symlink_is_refused(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    before = {p.name for p in src.iterdir()}
    assert "inside the checkpoint" in _one_line(_cli("report", src, "--out", src))
    assert "inside the checkpoint" in _one_line(_cli("report", src, "--out", src / "rep"))
    assert {p.name for p in src.iterdir()} == before
    out = tmp_path / "rep"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    os.symlink(victim, out / "index.html")
    assert _one_line(_cli("report", src, "--out", out)) == (
        f"{out / 'index.html'}: is a symbolic link: refused (it would be written through)"
    )
    os.symlink(tmp_path, tmp_path / "link")
    assert "--out is a symbolic link" in _one_line(_cli("report", src, "--out", tmp_path / "link"))
    assert victim.read_text() == "keep"


# ------------------------------------------------------------------ 3. terminal injection


def _forging_checkpoint(root: Path) -> tuple[Path, str]:
    name = f"model.layers.0.x\n{FORGED}\x1b]0;pwned\x07.weight"
    rng = np.random.default_rng(2)
    src = write_checkpoint(
        root,
        {"model.safetensors": {name: _w(rng, 256, 256), "model.norm.weight": np.ones(4, BF16)}},
    )
    return src, name


def _assert_clean(text: str) -> None:
    assert FORGED not in text.splitlines()
    assert "\x1b" not in text and "\x07" not in text


def test_names_cannot_forge_lines_in_dry_run_verify_inspect_and_report(tmp_path: Path) -> None:
    src, _ = _forging_checkpoint(tmp_path / "src")
    dry = _cli("quantize", src, tmp_path / "dst", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "\\x0a" + FORGED in dry.stdout
    _assert_clean(dry.stdout)
    for args in (("verify", src), ("inspect", src), ("report", src, "--recipe", "rceil")):
        result = _cli(*args)
        assert "Traceback" not in result.stderr, result.stderr
        _assert_clean(result.stdout + result.stderr)
    run = _cli("quantize", src, tmp_path / "dst")
    assert run.returncode == 0, run.stderr
    _assert_clean(run.stdout + run.stderr)


# ------------------------------------------------------------------ 4. hangs


def test_fifo_as_a_file_to_copy_is_refused_without_blocking(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    os.mkfifo(src / "tokenizer_extra.txt")
    dst = tmp_path / "dst"
    assert _one_line(_cli("quantize", src, dst)) == (
        f"{src / 'tokenizer_extra.txt'}: not a regular file (a FIFO): refused"
    )
    _not_complete(dst)


@pytest.mark.parametrize("command", ["verify", "report"])
def test_fifo_shard_does_not_block_verify_or_report(tmp_path: Path, command: str) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    os.mkfifo(root / "model.safetensors")
    result = _cli(command, root)
    assert "Traceback" not in result.stderr and result.returncode != 0
    assert "not a regular file (a FIFO)" in result.stdout + result.stderr


# ------------------------------------------------------------------ 5. tracebacks


@pytest.mark.parametrize("kind", ["file", "dangling symlink", "under a file"])
def test_destination_that_cannot_be_a_directory(tmp_path: Path, kind: str) -> None:
    src = _model(tmp_path / "src", shards=1)
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    dst = {
        "file": tmp_path / "afile",
        "dangling symlink": tmp_path / "dangling",
        "under a file": tmp_path / "afile" / "out",
    }[kind]
    message = _one_line(_cli("quantize", src, dst))
    assert message.startswith(f"{dst}: the destination ")
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_manifest_that_is_a_json_array(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / MANIFEST_NAME).write_text("[1, 2, 3]")
    assert _one_line(_cli("quantize", src, dst)) == (
        f"{dst / MANIFEST_NAME}: not a ue8m0 manifest of this version: use an empty directory"
    )
    _not_complete(dst)


def test_deep_json_in_the_manifest_and_config(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / MANIFEST_NAME).write_bytes(b"[" * 200_000 + b"]" * 200_000)
    assert _one_line(_cli("quantize", src, dst)) == (
        f"{dst / MANIFEST_NAME}: the manifest is nested 200000 levels deep (at most 64)"
    )
    (src / "config.json").write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    for command in (("quantize", src, tmp_path / "d2"), ("report", src), ("verify", src)):
        result = _cli(*command)
        assert "Traceback" not in result.stderr and result.returncode != 0, result.stderr
        assert "config.json is nested 100000 levels deep" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda ix: {**ix, "weight_map": list(ix["weight_map"])}, "weight_map is a JSON array"),
        (lambda ix: [ix], "the index is a JSON array, not an object"),
        (lambda ix: {**ix, "metadata": [1]}, "the index's metadata is a JSON array"),
        (
            lambda ix: {**ix, "metadata": {"total_size": "12"}},
            "the index's total_size '12' is not a non-negative integer",
        ),
    ],
)
def test_malformed_index_is_one_line_in_every_command(
    tmp_path: Path, edit: Any, reason: str
) -> None:
    src = _model(tmp_path / "src", shards=1)
    _edit_index(src, edit)
    for command in ("report", "inspect"):
        assert reason in _one_line(_cli(command, src))
    assert reason in _one_line(_cli("quantize", src, tmp_path / "dst"))
    result = _cli("verify", src)
    assert result.returncode == 1 and reason in result.stdout and "Traceback" not in result.stderr


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``where``; None when it worked, else why not."""
    where.mkdir()
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if result.returncode == 0 else f"mount failed: {result.stderr.strip()}"


def test_disk_full_is_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=2, rows=512)
    small = tmp_path / "small"
    why = _mount_tmpfs(small, "160k")
    if why is not None:
        print(f"skipped: {why}")
        pytest.skip(why)
    try:
        dst = small / "dst"
        message = _one_line(_cli("quantize", src, dst))
        assert message.endswith(": no space left on device"), message
        assert str(dst) in message  # the writer names its file
        _not_complete(dst)
    finally:
        subprocess.run(["umount", str(small)], check=False)


# ------------------------------------------------------------------ 7. verify


def test_verify_fails_a_flipped_data_byte_through_the_manifest(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    dst = tmp_path / "dst"
    assert _cli("quantize", src, dst, "-q").returncode == 0
    assert _cli("verify", dst).returncode == 0
    shard = dst / "model-00001-of-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-300] ^= 0x01  # a code byte of the FP8 weight: the header still parses
    shard.write_bytes(bytes(data))
    result = _cli("verify", dst)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{shard.name}: CRC-32 " in result.stdout and "the bytes changed" in result.stdout
    assert result.stdout.splitlines()[-1] == f"{dst}: FAILED"


def test_verify_reports_trailing_bytes(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    with open(src / "model-00001-of-00001.safetensors", "ab") as f:
        f.write(b"garbage!")
    result = _cli("verify", src)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "8 trailing bytes after the last tensor's data" in result.stdout


# ------------------------------------------------------------------ 8. success that is not


@pytest.mark.parametrize(
    ("rows", "extra"), [(320, ()), (256, ("--block", "100x100"))], ids=["hidden 320", "block"]
)
def test_quantize_that_converts_nothing_is_an_error(
    tmp_path: Path, rows: int, extra: tuple[str, ...]
) -> None:
    rng = np.random.default_rng(4)
    src = write_checkpoint(
        tmp_path / "src",
        {"model.safetensors": {"model.layers.0.mlp.up_proj.weight": _w(rng, rows, rows)}},
    )
    dst = tmp_path / "dst"
    message = _one_line(_cli("quantize", src, dst, *extra))
    assert message.startswith(f"{src}: nothing to convert: every tensor would be kept ")
    assert message.endswith("(--allow-empty writes the copy anyway)")
    assert not dst.exists()
    ok = _cli("quantize", src, dst, *extra, "--allow-empty", "-q")
    assert ok.returncode == 0, ok.stderr


def test_dequantize_of_a_high_precision_checkpoint_is_refused(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    assert _one_line(_cli("dequantize", src, tmp_path / "dst")) == (
        f"{src}: no FP8 weights: nothing to dequantize (the checkpoint is high precision)"
    )
    assert not (tmp_path / "dst").exists()


def _fp8(tmp_path: Path, *extra: str) -> Path:
    src = _model(tmp_path / "src", shards=1)
    q = tmp_path / "q"
    assert _cli("quantize", src, q, "-q", *extra).returncode == 0
    return q


def _set_scale(q: Path, value: np.ndarray) -> None:
    from ue8m0.checkpoint.safetensors import SafetensorsFile

    shard = q / "model-00001-of-00001.safetensors"
    with SafetensorsFile(shard) as f:
        tensors = {n: f.read(n) for n in f.keys()}
    name = "model.layers.1.mlp.up_proj.weight_scale_inv"
    tensors[name] = value.astype(tensors[name].dtype).reshape(tensors[name].shape)
    save(shard, tensors)
    (q / MANIFEST_NAME).unlink()


@pytest.mark.parametrize("scale_dtype", ["e8m0", "f32"])
def test_dequantize_refuses_nan_scales(tmp_path: Path, scale_dtype: str) -> None:
    q = _fp8(tmp_path, "--scale-dtype", scale_dtype)
    nan = np.array([1.0, np.nan, 1.0, 1.0], np.float32)
    _set_scale(q, nan.astype(ml_dtypes.float8_e8m0fnu) if scale_dtype == "e8m0" else nan)
    dst = tmp_path / "dst"
    message = _one_line(_cli("dequantize", q, dst))
    byte = " (byte 0xFF)" if scale_dtype == "e8m0" else ""
    assert message.endswith(
        "tensor 'model.layers.1.mlp.up_proj.weight': scale "
        f"model.layers.1.mlp.up_proj.weight_scale_inv is NaN{byte} at (0, 1)"
    )
    _not_complete(dst)


def test_dequantize_refuses_a_grid_that_does_not_match_the_configured_block(
    tmp_path: Path,
) -> None:
    q = _fp8(tmp_path)
    config = json.loads((q / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [64, 64]
    (q / "config.json").write_text(json.dumps(config))
    message = _one_line(_cli("dequantize", q, tmp_path / "dst"))
    assert message.endswith("with the configured weight_block_size [64, 64]")
    assert not (tmp_path / "dst").exists()


def test_quantize_refuses_to_replace_another_quantization_config(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    config = {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}}
    (src / "config.json").write_text(json.dumps(config))
    message = _one_line(_cli("quantize", src, tmp_path / "dst"))
    assert message.startswith(f"{src / 'config.json'}: already has a quantization_config ")
    assert "--replace-quantization-config" in message and not (tmp_path / "dst").exists()
    ok = _cli("quantize", src, tmp_path / "dst", "--replace-quantization-config", "-q")
    assert ok.returncode == 0, ok.stderr
    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["quantization_config"]["quant_method"] == "fp8"


def test_a_second_index_is_not_copied(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=1)
    (src / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    (src / "other.safetensors.index.json").write_text('{"weight_map": {}}')
    assert _cli("quantize", src, tmp_path / "dst", "-q").returncode == 0
    names = {p.name for p in (tmp_path / "dst").iterdir()}
    assert INDEX_NAME in names and not {n for n in names if n != INDEX_NAME and "index" in n}


# ------------------------------------------------------------------ 9. smaller


def test_relayout_nonfinite_names_the_tensor_and_no_python_argument(tmp_path: Path) -> None:
    q = _fp8(tmp_path)
    from ue8m0.checkpoint.safetensors import SafetensorsFile

    shard = q / "model-00001-of-00001.safetensors"
    with SafetensorsFile(shard) as f:
        tensors = {n: f.read(n) for n in f.keys()}
    weight = tensors["model.layers.1.mlp.up_proj.weight"].view(np.uint8).copy()
    weight[3, 5] = 0x7F  # e4m3 NaN
    tensors["model.layers.1.mlp.up_proj.weight"] = weight.view(ml_dtypes.float8_e4m3fn)
    save(shard, tensors)
    message = _one_line(_cli("relayout", q, tmp_path / "mx", "--to", "mxfp8"))
    assert "tensor 'model.layers.1.mlp.up_proj.weight': non-finite value nan" in message
    assert "nonfinite=" not in message
    _not_complete(tmp_path / "mx")


def test_sigint_leaves_no_temporary_file(tmp_path: Path) -> None:
    src = _model(tmp_path / "src", shards=4, rows=4096)
    dst = tmp_path / "dst"
    proc = _popen("quantize", src, dst, "-q", "--workers", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if dst.is_dir() and list(dst.glob(f"*{TMP_SUFFIX}")):
            break
        time.sleep(0.005)
    else:
        proc.kill()
        proc.communicate()
        pytest.skip("the run finished before a temporary file was seen")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    _not_complete(dst)
    assert not (dst / LOCK_NAME).exists()
