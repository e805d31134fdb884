"""Open a Hugging Face safetensors checkpoint directory, checking it is safe to read.

Checks done before any conversion starts: every path the index names stays inside the
checkpoint (no ``..``, no absolute paths, no symlink escaping it — except the Hugging Face
cache's own ``snapshots/<rev>/x -> ../../blobs/<hash>`` links), is a ``.safetensors`` name
that none of ue8m0's own outputs can take (hidden names — the manifest, lock, stats, temporary
files — and the index, ``config.json``, ``README.md``), every shard exists as a regular file
and has a valid header, index and shards agree, no tensor is in two shards, and pickle-only
checkpoints are refused without being opened. Files to copy along (tokenizer, ``*.py``) must
be regular files: a FIFO or a device is refused before anything opens it (it would block the
copy or read forever). JSON files go through :func:`.jsonio.load_json` (bounded size and depth).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ue8m0.checkpoint.jsonio import load_json
from ue8m0.checkpoint.rawio import open_regular
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
    reserved = reserved_reason(str(pure))
    if reserved is not None:
        raise CheckpointError(index_path, f"shard name {name!r} {reserved}: refused")
    return str(pure)


def reserved_reason(rel: str) -> str | None:
    """Why ``rel`` cannot be a shard's name (None when it can): ue8m0 writes its manifest,
    lock, stats, source records and temporary files under hidden names, and the index,
    ``config.json`` and the model card next to the shards; a shard under any of those names
    would be overwritten (or would overwrite them) in DST."""
    parts = PurePosixPath(rel).parts
    if any(part.startswith(".") for part in parts):
        return "is hidden (ue8m0 keeps its own files under hidden names)"
    if not rel.endswith(".safetensors"):
        return "is not a .safetensors file name"
    return None


def _find_index(root: Path) -> Path | None:
    if (root / INDEX_NAME).exists():
        return root / INDEX_NAME
    found = sorted(root.glob("*.safetensors.index.json"))
    return found[0] if found else None


def _weight_map(index: Any, index_path: Path) -> dict[str, Any]:
    """The index's ``weight_map``, checked: an object of tensor name -> shard name; the
    ``metadata`` an object whose ``total_size`` (if any) is an integer."""
    if not isinstance(index, dict):
        raise CheckpointError(index_path, f"the index is a JSON {_kind(index)}, not an object")
    weight_map = index.get("weight_map")
    if weight_map is None:
        raise CheckpointError(index_path, "the index has no weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            index_path, f"the index's weight_map is a JSON {_kind(weight_map)}, not an object"
        )
    if not weight_map:
        raise CheckpointError(index_path, "the index's weight_map is empty")
    metadata = index.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(
            index_path, f"the index's metadata is a JSON {_kind(metadata)}, not an object"
        )
    total = (metadata or {}).get("total_size")
    if total is not None and (type(total) is not int or total < 0):
        raise CheckpointError(
            index_path, f"the index's total_size {total!r} is not a non-negative integer"
        )
    return weight_map


def _kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


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
        index = load_json(index_path, "the index")
        weight_map = _weight_map(index, index_path)
        shards = sorted({_safe_relative(root, v, index_path) for v in weight_map.values()})
        for shard in shards:
            if not (root / shard).exists():
                raise CheckpointError(root / shard, "shard named in the index is missing")
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors") if not p.name.startswith("."))
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
        if (root / "config.json").exists():
            check_inside(root, root / "config.json", "config.json")
            config = load_json(root / "config.json", "config.json")
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
                or fname.endswith(".index.json")  # the index read, or another one: not copied
                or path.suffix in PICKLE_SUFFIXES
            ):
                continue
            check_inside(root, path, "file")
            _check_regular(path)
            out.append(rel)
    return out


def _check_regular(path: Path) -> None:
    """Refuse a file to copy that is not a regular file (a FIFO would block the copy, a device
    would be read forever): :func:`.rawio.open_regular` stats it before opening."""
    os.close(open_regular(path))


def check_destination(src: Path, dst: Path) -> None:
    """Refuse a destination that is the source or inside it, that exists and is not a
    directory (a file, a FIFO), that is a symbolic link to nothing, or whose path runs
    through a file: each a one-line error before anything is created."""
    check_output_dir(dst, "the destination")
    src_dir = (src if src.is_dir() else src.parent).resolve()
    real = dst.resolve()
    if real == src_dir or src_dir in real.parents:
        raise CheckpointError(dst, f"the destination is inside the source {src_dir}: refused")


def check_output_dir(out: Path, what: str) -> None:
    """Refuse an output directory ``out`` that cannot be one: an existing non-directory, a
    dangling symbolic link, or a path under a file."""
    if out.is_symlink() and not out.exists():
        raise CheckpointError(out, f"{what} is a symbolic link to nothing ({os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, f"{what} exists and is not a directory")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(out, f"{what} is under {parent}, which is not a directory")
            break
