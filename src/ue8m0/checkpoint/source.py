"""Open a Hugging Face safetensors checkpoint directory, checking it is safe to read.

Checks done before any conversion starts: every path the index names stays inside the
checkpoint (no ``..``, no absolute paths, no symlink escaping it — except the Hugging Face
cache's own ``snapshots/<rev>/x -> ../../blobs/<hash>`` links), every shard exists and has a
valid header, index and shards agree, no tensor is in two shards, and pickle-only checkpoints
are refused without being opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ue8m0.checkpoint.safetensors import SafetensorsFile, TensorInfo, read_header
from ue8m0.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MANIFEST_NAME = ".ue8m0-manifest.json"


@dataclass
class Checkpoint:
    """A validated checkpoint: shards, where each tensor is, config and the other files."""

    root: Path
    shards: list[str]
    weight_map: dict[str, str]
    tensors: dict[str, TensorInfo]
    shard_metadata: dict[str, dict[str, str]]
    config: dict[str, Any] | None
    index: dict[str, Any] | None
    extra_files: list[str] = field(default_factory=list)

    def path(self, shard: str) -> Path:
        return self.root / shard

    def open(self, shard: str) -> SafetensorsFile:
        return SafetensorsFile(self.path(shard))

    def shard_tensors(self, shard: str) -> list[TensorInfo]:
        """The tensors of ``shard`` in the order of its header."""
        return [t for n, t in self.tensors.items() if self.weight_map[n] == shard]

    def shard_bytes(self, shard: str) -> int:
        return sum(t.nbytes for t in self.shard_tensors(shard))


def allowed_roots(root: Path) -> list[Path]:
    """Directories files of ``root`` may resolve into (the HF cache's blobs are allowed)."""
    real = root.resolve()
    roots = [real]
    if root.parent.name == "snapshots":
        roots.append((root.parent.parent / "blobs").resolve())
    return roots


def check_inside(root: Path, path: Path, what: str) -> None:
    """Refuse ``path`` if it (or the symlink it is) resolves outside ``root``."""
    real = path.resolve()
    if not any(real == r or r in real.parents for r in allowed_roots(root)):
        raise CheckpointError(path, f"{what} resolves to {real}, outside the checkpoint {root}")


def _safe_relative(root: Path, name: Any, index_path: Path) -> str:
    if not isinstance(name, str) or not name:
        raise CheckpointError(index_path, f"shard name {name!r} is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise CheckpointError(index_path, f"shard {name!r} points outside the checkpoint")
    return str(pure)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"{what} is not valid JSON ({exc})") from None


def _find_index(root: Path) -> Path | None:
    if (root / INDEX_NAME).exists():
        return root / INDEX_NAME
    found = sorted(root.glob("*.safetensors.index.json"))
    return found[0] if found else None


def open_checkpoint(src: str | Path) -> Checkpoint:
    """Open and validate ``src``: a checkpoint directory or a single ``.safetensors`` file."""
    src = Path(src)
    if not src.exists():
        raise CheckpointError(src, "no such file or directory")
    if src.is_file():
        if src.suffix != ".safetensors":
            _refuse_pickle_file(src)
            raise CheckpointError(src, "not a .safetensors file")
        return _build(src.parent, [src.name], None, None, single=True)
    root = src
    index_path = _find_index(root)
    index: dict[str, Any] | None = None
    if index_path is not None:
        check_inside(root, index_path, "the index")
        index = _read_json(index_path, "the index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "the index has no weight_map")
        shards = sorted({_safe_relative(root, v, index_path) for v in weight_map.values()})
        for shard in shards:
            if not (root / shard).is_file():
                raise CheckpointError(root / shard, "shard named in the index is missing")
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors"))
        if not shards:
            pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise CheckpointError(
                    root / pickles[0],
                    "pickle-only checkpoint: refused (never unpickled); convert it to "
                    "safetensors first",
                )
            raise CheckpointError(root, "no .safetensors files and no index")
    return _build(root, shards, index, index_path, single=False)


def _refuse_pickle_file(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(path, "pickle checkpoint: refused (never unpickled)")


def _build(
    root: Path,
    shards: list[str],
    index: dict[str, Any] | None,
    index_path: Path | None,
    single: bool,
) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    weight_map: dict[str, str] = {}
    metadata: dict[str, dict[str, str]] = {}
    for shard in shards:
        path = root / shard
        check_inside(root, path, "shard")
        infos, meta, _ = read_header(path)
        metadata[shard] = meta
        for name, info in infos.items():
            if name in weight_map:
                raise CheckpointError(path, f"tensor is also in {weight_map[name]}", name)
            weight_map[name] = shard
            tensors[name] = info
    if index is not None:
        assert index_path is not None
        listed = index["weight_map"]
        for name, shard in listed.items():
            if weight_map.get(name) != shard:
                where = weight_map.get(name)
                reason = "not in any shard" if where is None else f"is in {where}, not {shard}"
                raise CheckpointError(
                    index_path, f"the index names it in {shard} but it {reason}", name
                )
        for name, shard in weight_map.items():
            if name not in listed:
                raise CheckpointError(root / shard, "tensor missing from the index", name)
    config = None
    extras: list[str] = []
    if not single:
        if (root / "config.json").is_file():
            check_inside(root, root / "config.json", "config.json")
            config = _read_json(root / "config.json", "config.json")
            if not isinstance(config, dict):
                raise CheckpointError(root / "config.json", "config.json is not a JSON object")
        extras = _extra_files(root, set(shards), index_path)
    return Checkpoint(root, shards, weight_map, tensors, metadata, config, index, extras)


def _extra_files(root: Path, shards: set[str], index_path: Path | None) -> list[str]:
    """Files to copy as they are: tokenizer, configs, ``*.py``, ... (no weights, no pickles)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            if (
                fname.startswith(".")
                or rel in shards
                or fname.endswith(".safetensors")
                or (index_path is not None and path == index_path)
                or path.suffix in PICKLE_SUFFIXES
            ):
                continue
            check_inside(root, path, "file")
            out.append(rel)
    return out


def check_destination(src: Path, dst: Path) -> None:
    """Refuse a destination equal to the source or inside it."""
    src_dir = (src if src.is_dir() else src.parent).resolve()
    real = dst.resolve()
    if real == src_dir or src_dir in real.parents:
        raise CheckpointError(dst, f"the destination is inside the source {src_dir}: refused")
