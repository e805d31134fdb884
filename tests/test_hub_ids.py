"""SRC given as a Hub id: resolved from the local Hugging Face cache, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckpt_fixtures import run_cli, synthetic_tensors, write_checkpoint


def _cache_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A Hugging Face cache holding ``org/tiny`` as the library lays it out: files in
    ``blobs/``, the snapshot's names symlinked to them, ``refs/main`` naming the revision."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--org--tiny"
    made = write_checkpoint(tmp_path / "made", synthetic_tensors())
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(made.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return made, snapshot


def test_a_cached_hub_id_is_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made, _ = _cache_with(tmp_path, monkeypatch)
    code, out, err = run_cli(["inspect", "org/tiny", "--json"], capsys)
    assert code == 0, err
    assert (
        json.loads(out)["tensors"]
        == json.loads(run_cli(["inspect", made, "--json"], capsys)[1])["tensors"]
    )
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["quantize", "org/tiny", a, "-q"], capsys)[0] == 0
    assert run_cli(["quantize", made, b, "-q"], capsys)[0] == 0
    for f in sorted(b.glob("*.safetensors")):
        assert (a / f.name).read_bytes() == f.read_bytes()
    assert run_cli(["verify", a, "--against", "org/tiny@main", "-q"], capsys)[0] == 0


def test_an_uncached_hub_id_is_one_line_and_nothing_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cache_with(tmp_path, monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # even online, only the cache is asked
    code, _, err = run_cli(["quantize", "org/not-here", tmp_path / "q"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not a path nor a Hub id in the local cache" in err or "neither a path" in err
    assert "hf download org/not-here" in err and not (tmp_path / "q").exists()
    code, _, err = run_cli(["quantize", "./no/such/dir", tmp_path / "q"], capsys)
    assert code == 2 and "no such file or directory" in err
