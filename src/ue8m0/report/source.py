"""The tensors of a checkpoint the report can measure, in a stable order, read in row slabs.

A checkpoint is opened with the same opener as every other command
(:func:`ue8m0.checkpoint.source.open_checkpoint`: path, symlink and index checks, pickles
refused), and FP8 weights are paired with their scales by the one pair finder
(:mod:`ue8m0.checkpoint.pairs`). Tensors are read through the zero-copy safetensors reader one
slab of rows at a time, so memory stays bounded by the slab, not the tensor.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ue8m0.checkpoint.fp8source import Fp8Reader
from ue8m0.checkpoint.registry import is_scale_name
from ue8m0.checkpoint.safetensors import FLOAT_TAGS, FP8_TAGS, SafetensorsFile
from ue8m0.checkpoint.source import open_checkpoint
from ue8m0.errors import CheckpointError


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives."""

    name: str
    shard: Path
    dtype: str
    shape: tuple[int, ...]
    #: the checkpoint an FP8 tensor's scale is looked up in (None for float tensors)
    checkpoint: Path | None = None


def list_tensors(
    src: str | Path, include: tuple[str, ...] = ()
) -> tuple[list[TensorRef], dict[str, str]]:
    """``(measurable tensors, {skipped name: reason})`` of ``src`` in shard and header order.

    ``include`` are glob patterns on tensor names (all tensors when empty). FP8 tensors are
    measured as their dequantized values (float32 ``decode * scale``), or skipped with the
    reason when their scale is unusable.
    """
    ckpt = open_checkpoint(src)
    has_fp8 = any(t.dtype in FP8_TAGS for t in ckpt.tensors.values())
    fp8_error = _fp8_problem(str(src)) if has_fp8 else ""
    measured: list[TensorRef] = []
    skipped: dict[str, str] = {}
    for shard in ckpt.shards:
        for info in ckpt.shard_tensors(shard):
            if include and not any(fnmatch.fnmatchcase(info.name, p) for p in include):
                continue
            reason = _skip_reason(info.name, info.dtype, info.shape, has_fp8)
            if reason is None and info.dtype in FP8_TAGS and fp8_error:
                reason = f"FP8 tensor not readable as dequantized values: {fp8_error}"
            if reason:
                skipped[info.name] = reason
            else:
                fp8 = Path(src) if info.dtype in FP8_TAGS else None
                measured.append(TensorRef(info.name, ckpt.path(shard), info.dtype, info.shape, fp8))
    return measured, skipped


@lru_cache(maxsize=2)
def _fp8_reader(src: str) -> Fp8Reader:
    return Fp8Reader(open_checkpoint(src))


def _fp8_problem(src: str) -> str:
    """Why the FP8 weights of ``src`` cannot be dequantized ('' when they can)."""
    try:
        _fp8_reader(src)
    except CheckpointError as exc:
        return str(exc)
    return ""


def _skip_reason(name: str, dtype: str, shape: tuple[int, ...], has_fp8: bool) -> str | None:
    if dtype in FP8_TAGS:
        return "fewer than 2 dims" if len(shape) < 2 else None
    if has_fp8 and is_scale_name(name):
        return "scale of an FP8 tensor"
    if dtype not in FLOAT_TAGS:
        return f"not a float tensor ({dtype})"
    if len(shape) < 2:
        return "fewer than 2 dims (norms and biases stay in high precision)"
    if 0 in shape:
        return "empty"
    return None


def iter_slabs(ref: TensorRef, rows: int) -> Iterator[np.ndarray]:
    """float32 copies of ``rows`` rows at a time of each matrix of ``ref`` (leading dims looped).

    ``rows <= 0`` yields each matrix whole.
    """
    if ref.checkpoint is not None:
        yield from _fp8_slabs(ref, rows)
        return
    n, lead = ref.shape[-2], math.prod(ref.shape[:-2])
    step = rows if rows > 0 else n
    with SafetensorsFile(ref.shard) as st:  # pread: a source truncated meanwhile is an error
        for e in range(lead):
            for lo in range(0, n, step):
                yield st.read_rows(ref.name, e, lo, min(n, lo + step)).astype(np.float32)


def _fp8_slabs(ref: TensorRef, rows: int) -> Iterator[np.ndarray]:
    """Like :func:`iter_slabs` for an FP8 tensor: its float32 dequantized values."""
    assert ref.checkpoint is not None
    reader = _fp8_reader(str(ref.checkpoint))
    n, lead = ref.shape[-2], math.prod(ref.shape[:-2])
    step = rows if rows > 0 else n
    with SafetensorsFile(ref.shard) as st:
        for e in range(lead):
            for lo in range(0, n, step):
                yield reader.rows(st, ref.name, e, lo, min(n, lo + step))
