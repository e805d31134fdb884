"""The resume manifest: a conversion's parameters and every finished shard (size, crc32).

It lives in the destination as ``.ue8m0-manifest.json`` and is rewritten atomically after each
shard. A rerun with the same parameters skips a shard only when its output still matches its
record (size, CRC-32) *and* its source still holds the bytes the output was made from (the
CRC-32 of what the conversion read, :mod:`.srccrc`; size and mtime are only a pre-check), with
the same plan for it; any other shard is converted again, so a source changed in place between
two runs never leaves a destination mixing both. A rerun with other parameters, or over a
source whose shard names or sizes changed, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.dstlock import LOCK_NAME
from ue8m0.checkpoint.jsonio import load_json
from ue8m0.checkpoint.plan import ShardPlan
from ue8m0.checkpoint.source import MANIFEST_NAME, Checkpoint
from ue8m0.checkpoint.srccrc import (
    SOURCES_DIR,
    drop_source_records,
    source_unchanged,
    take_source_record,
)
from ue8m0.checkpoint.writer import TMP_SUFFIX, file_checksum, write_json_atomic
from ue8m0.errors import CheckpointError

VERSION = 1


def source_fingerprint(ckpt: Checkpoint) -> dict[str, int]:
    """Shard name -> size in bytes (cheap, detects a changed or swapped source)."""
    return {s: ckpt.path(s).stat().st_size for s in ckpt.shards}


@dataclass
class Manifest:
    path: Path
    params: dict[str, Any]
    source: dict[str, int]
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def open(cls, dst: Path, params: dict[str, Any], source: dict[str, int]) -> Manifest:
        """Load the manifest of ``dst`` (checking it matches) or start a new one."""
        path = dst / MANIFEST_NAME
        if not path.exists() and not path.is_symlink():
            leftovers = [
                p.name
                for p in dst.iterdir()
                if not p.name.endswith(TMP_SUFFIX) and p.name not in (LOCK_NAME, SOURCES_DIR)
            ]
            if leftovers:
                raise CheckpointError(
                    dst,
                    "the destination is not empty and has no ue8m0 "
                    f"manifest ({leftovers[0]}, ...): use an empty directory",
                )
            return cls(path, params, source)
        data = load_json(path, "the manifest")
        if (
            not isinstance(data, dict)
            or data.get("version") != VERSION
            or not isinstance(data.get("shards"), dict)
            or not isinstance(data.get("params", {}), dict)
        ):
            raise CheckpointError(
                path, "not a ue8m0 manifest of this version: use an empty directory"
            )
        if data.get("params") != params:
            diff = sorted(
                k
                for k in {**params, **data.get("params", {})}
                if params.get(k) != data.get("params", {}).get(k)
            )
            raise CheckpointError(
                dst,
                "refusing to resume with different parameters "
                f"({', '.join(diff)}); use another destination or the "
                "same options",
            )
        if data.get("source") != source:
            raise CheckpointError(
                dst,
                "refusing to resume: the source changed since the "
                "first run (shard names or sizes differ)",
            )
        return cls(path, params, source, dict(data["shards"]), bool(data.get("complete")))

    def is_done(self, shard: ShardPlan, dst: Path, src_root: Path) -> bool:
        """True when ``shard`` was recorded, its output file still has that size and CRC-32,
        and its source the bytes it was made from (:func:`.srccrc.source_unchanged`)."""
        record = self.shards.get(shard.name)
        out = dst / shard.name
        if not isinstance(record, dict) or out.is_symlink() or not out.is_file():
            return False
        if out.stat().st_size != record.get("size") or file_checksum(out) != record.get("crc32"):
            return False
        return source_unchanged(src_root, record.get("source"), shard)

    def record(self, shard: str, size: int, checksum: str) -> None:
        """Record a converted shard, with the source record its conversion left in DST."""
        entry: dict[str, Any] = {"size": size, "crc32": checksum}
        source = take_source_record(self.path.parent, shard)
        if source is not None:
            entry["source"] = source
        self.shards[shard] = entry
        self.save()

    def finish(self) -> None:
        self.complete = True
        self.save()
        drop_source_records(self.path.parent)

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "version": VERSION,
                "params": self.params,
                "source": self.source,
                "shards": self.shards,
                "complete": self.complete,
            },
        )
