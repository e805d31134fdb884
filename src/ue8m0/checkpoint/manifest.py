"""The resume manifest: a conversion's parameters and every finished shard (size, crc32).

It lives in the destination as ``.ue8m0-manifest.json`` and is rewritten atomically after each
shard. A rerun with the same parameters skips the shards whose file still matches its record;
a rerun with other parameters, or over a source that changed, is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.source import MANIFEST_NAME, Checkpoint
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
        if not path.exists():
            leftovers = [p.name for p in dst.iterdir() if not p.name.endswith(TMP_SUFFIX)]
            if leftovers:
                raise CheckpointError(
                    dst,
                    "the destination is not empty and has no ue8m0 "
                    f"manifest ({leftovers[0]}, ...): use an empty directory",
                )
            return cls(path, params, source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(path, f"unreadable manifest ({exc})") from None
        if data.get("version") != VERSION or not isinstance(data.get("shards"), dict):
            raise CheckpointError(path, "manifest of another version: use an empty directory")
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

    def is_done(self, shard: str, dst: Path) -> bool:
        """True when ``shard`` was recorded and its file still has that size and checksum."""
        record = self.shards.get(shard)
        out = dst / shard
        if record is None or not out.is_file() or out.stat().st_size != record.get("size"):
            return False
        return file_checksum(out) == record.get("crc32")

    def record(self, shard: str, size: int, checksum: str) -> None:
        self.shards[shard] = {"size": size, "crc32": checksum}
        self.save()

    def finish(self) -> None:
        self.complete = True
        self.save()

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
