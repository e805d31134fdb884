"""Per-tensor error stats of ``requantize`` / ``relayout``: one small JSON file per output shard
under ``DST/.ue8m0-stats/`` (hidden), so they survive worker processes and resumed runs;
:mod:`ue8m0.checkpoint.requant_report` turns them into the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ue8m0.checkpoint.writer import write_json_atomic

STATS_DIR = ".ue8m0-stats"


def _path(dst_root: Path, shard: str) -> Path:
    return dst_root / STATS_DIR / (shard.replace("/", "__") + ".json")


def write_stats(dst_root: Path, shard: str, rows: list[dict[str, Any]]) -> None:
    """The per-tensor metrics of one output shard, next to it."""
    path = _path(dst_root, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, rows)


def read_stats(dst_root: Path, shards: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shard in shards:
        path = _path(dst_root, shard)
        if path.is_file():
            rows.extend(json.loads(path.read_text(encoding="utf-8")))
    return rows
