"""Each kind of bad input: a one-line error naming file/tensor/reason, a non-zero exit, SRC
untouched and nothing in DST that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ckpt_fixtures import BF16, run_cli, save, write_checkpoint


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _raw_shard(path: Path, header: dict[str, object], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _good(root: Path) -> Path:
    w = (np.random.default_rng(0).standard_normal((128, 256)) * 0.02).astype(BF16)
    return write_checkpoint(
        root,
        {
            "model-00001-of-00002.safetensors": {"a.weight": w},
            "model-00002-of-00002.safetensors": {"b.weight": w},
        },
    )


def _expect_refused(
    tmp_path: Path,
    src: Path,
    capsys: pytest.CaptureFixture[str],
    *needles: str,
    extra: tuple[str, ...] = (),
) -> str:
    before = _snapshot(src)
    dst = tmp_path / "dst"
    code, _, err = run_cli(["quantize", src, dst, "-q", *extra], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ue8m0: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(src) == before
    if dst.exists():
        assert not (dst / "model.safetensors.index.json").exists()
        assert not (dst / "config.json").exists()
        assert not list(dst.glob("*.ue8m0-tmp")) and not list(dst.glob(".*.ue8m0-tmp"))
    return lines[0]


def test_truncated_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    shard = src / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    _expect_refused(
        tmp_path, src, capsys, "model-00002-of-00002.safetensors", "b.weight", "truncated"
    )


def test_header_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    (src / "model-00001-of-00002.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope" + b"0")
    _expect_refused(tmp_path, src, capsys, "model-00001-of-00002.safetensors", "not valid JSON")


def test_header_larger_than_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    (src / "model-00001-of-00002.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    _expect_refused(tmp_path, src, capsys, "header length 1000000 is larger than the file")


def test_overlapping_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    _raw_shard(
        src / "model-00001-of-00002.safetensors",
        {
            "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "c.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
        },
        bytes(24),
    )
    _expect_refused(tmp_path, src, capsys, "overlap")


def test_out_of_range_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    _raw_shard(
        src / "model-00001-of-00002.safetensors",
        {"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
        bytes(8),
    )
    _expect_refused(tmp_path, src, capsys, "a.weight", "run past the end")
    _raw_shard(
        src / "model-00001-of-00002.safetensors",
        {"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 8]}},
        bytes(16),
    )
    _expect_refused(tmp_path, src, capsys, "a.weight", "do not fit shape")


def test_unknown_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    _raw_shard(
        src / "model-00001-of-00002.safetensors",
        {"a.weight": {"dtype": "F4_E9", "shape": [2], "data_offsets": [0, 1]}},
        bytes(1),
    )
    _expect_refused(tmp_path, src, capsys, "a.weight", "unknown dtype 'F4_E9'")


def test_shard_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    (src / "model-00002-of-00002.safetensors").unlink()
    _expect_refused(tmp_path, src, capsys, "model-00002-of-00002.safetensors", "missing")


def test_index_path_outside_src(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    save(tmp_path / "evil.safetensors", {"b.weight": np.zeros((128, 128), BF16)})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["b.weight"] = "../evil.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect_refused(tmp_path, src, capsys, "points outside the checkpoint")


def test_symlink_escaping_src(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    outside = tmp_path / "outside.safetensors"
    os.replace(src / "model-00002-of-00002.safetensors", outside)
    os.symlink(outside, src / "model-00002-of-00002.safetensors")
    _expect_refused(tmp_path, src, capsys, "outside the checkpoint")


def test_hf_cache_blob_symlinks_are_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """snapshots/<rev>/x -> ../../blobs/<hash> is how the Hugging Face cache stores files."""
    repo = tmp_path / "models--x"
    built = _good(tmp_path / "build")
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    for f in built.iterdir():
        os.replace(f, repo / "blobs" / f.name)
        os.symlink(Path("../../blobs") / f.name, snap / f.name)
    code, _, err = run_cli(["quantize", snap, tmp_path / "q", "-q"], capsys)
    assert code == 0, err


class _Boom:
    """Unpickling this would create a file: proof that a .bin is never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_only_checkpoint_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    marker = tmp_path / "unpickled"
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    (src / "config.json").write_text("{}")
    _expect_refused(tmp_path, src, capsys, "pytorch_model.bin", "pickle-only", "never unpickled")
    assert not marker.exists()


def test_nonfinite_weight_names_tensor_and_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = np.zeros((3, 256, 256), BF16)
    w[1, 200, 130] = np.inf
    src = write_checkpoint(tmp_path / "src", {"model.safetensors": {"e.weight": w}}, index=False)
    line = _expect_refused(
        tmp_path, src, capsys, "e.weight", "non-finite value inf", "block (1, 1, 1)"
    )
    assert "model.safetensors" in line
    code, _, err = run_cli(
        ["quantize", src, tmp_path / "p", "-q", "--nonfinite", "propagate"], capsys
    )
    assert code == 0, err
    code, out, _ = run_cli(["verify", tmp_path / "p"], capsys)
    assert code == 1 and "non-finite scale" in out


def test_destination_inside_or_equal_to_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _good(tmp_path / "src")
    before = _snapshot(src)
    for dst in (src, src / "out"):
        code, _, err = run_cli(["quantize", src, dst, "-q"], capsys)
        assert code == 2 and "inside the source" in err
    assert _snapshot(src) == before and not (src / "out").exists()


def test_destination_not_empty_without_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _good(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "precious.txt").write_text("keep me")
    _expect_refused(tmp_path, src, capsys, "not empty", "precious.txt")
    assert (tmp_path / "dst" / "precious.txt").read_text() == "keep me"


def test_already_fp8_source_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _good(tmp_path / "src")
    assert run_cli(["quantize", src, tmp_path / "q", "-q"], capsys)[0] == 0
    code, _, err = run_cli(["quantize", tmp_path / "q", tmp_path / "qq", "-q"], capsys)
    assert code == 2 and "already FP8" in err


def test_dequantize_fp8_without_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ml_dtypes

    src = write_checkpoint(
        tmp_path / "src",
        {"model.safetensors": {"x.weight": np.zeros((128, 128), ml_dtypes.float8_e4m3fn)}},
        index=False,
    )
    code, _, err = run_cli(["dequantize", src, tmp_path / "dq", "-q"], capsys)
    assert code == 2 and "'x.weight'" in err and "without a scale" in err
