"""The tensors of a checkpoint the report can measure, in a stable order, read in row slabs.

A checkpoint is one ``.safetensors`` file or a directory of them (sharded, with or without a
``*.safetensors.index.json``). Tensors are read through the zero-copy safetensors reader one slab
of rows at a time, so memory stays bounded by the slab, not the tensor.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.errors import CheckpointError

if TYPE_CHECKING:
    from ue8m0.checkpoint.fp8source import Fp8Reader

#: dtypes measured as they are
FLOAT_TAGS = ("F32", "F16", "BF16")
#: FP8 element dtypes: measured as their dequantized values (float32 ``decode * scale``, any
#: layout the checkpoint package reads); skipped with the reason when their scale is unusable
FP8_TAGS = ("F8_E4M3", "F8_E5M2")
#: name suffixes of the scales that travel with FP8 weights
SCALE_SUFFIXES = ("_scale_inv", ".weight_scale", "_scale")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives."""

    name: str
    shard: Path
    dtype: str
    shape: tuple[int, ...]
    #: the checkpoint an FP8 tensor's scale is looked up in (None for float tensors)
    checkpoint: Path | None = None


def shard_paths(src: str | Path) -> list[Path]:
    """The safetensors files of ``src`` (a file, or a directory with or without an index)."""
    src = Path(src)
    if not src.exists():
        raise CheckpointError(src, "no such file or directory")
    if src.is_file():
        if src.suffix != ".safetensors":
            raise CheckpointError(src, "not a .safetensors file")
        return [src]
    indexes = sorted(src.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(indexes[0], f"unreadable index ({exc})") from None
        names = sorted({str(v) for v in weight_map.values()})
        for name in names:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise CheckpointError(indexes[0], f"shard {name!r} points outside the checkpoint")
        return [src / n for n in names]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(src, "no .safetensors files in this directory")
    return shards


def list_tensors(
    src: str | Path, include: tuple[str, ...] = ()
) -> tuple[list[TensorRef], dict[str, str]]:
    """``(measurable tensors, {skipped name: reason})`` of ``src`` in shard and header order.

    ``include`` are glob patterns on tensor names (all tensors when empty).
    """
    measured: list[TensorRef] = []
    skipped: dict[str, str] = {}
    fp8_error: str | None = None
    for shard in shard_paths(src):
        with SafetensorsFile(shard) as st:
            infos = [st.tensors[n] for n in st.keys()]
        has_fp8 = any(t.dtype in FP8_TAGS for t in infos)
        if has_fp8 and fp8_error is None:
            fp8_error = _fp8_problem(src)
        for info in infos:
            if include and not any(fnmatch.fnmatchcase(info.name, p) for p in include):
                continue
            reason = _skip_reason(info.name, info.dtype, info.shape, has_fp8)
            if reason is None and info.dtype in FP8_TAGS and fp8_error:
                reason = f"FP8 tensor not readable as dequantized values: {fp8_error}"
            if reason:
                skipped[info.name] = reason
            else:
                fp8 = Path(src) if info.dtype in FP8_TAGS else None
                measured.append(TensorRef(info.name, shard, info.dtype, info.shape, fp8))
    return measured, skipped


@lru_cache(maxsize=2)
def _fp8_reader(src: str) -> Fp8Reader:
    from ue8m0.checkpoint.fp8source import Fp8Reader
    from ue8m0.checkpoint.source import open_checkpoint

    return Fp8Reader(open_checkpoint(src))


def _fp8_problem(src: str | Path) -> str:
    """Why the FP8 weights of ``src`` cannot be dequantized ('' when they can)."""
    try:
        _fp8_reader(str(src))
    except CheckpointError as exc:
        return str(exc)
    return ""


def _skip_reason(name: str, dtype: str, shape: tuple[int, ...], has_fp8: bool) -> str | None:
    if dtype in FP8_TAGS:
        return "fewer than 2 dims" if len(shape) < 2 else None
    if has_fp8 and name.endswith(SCALE_SUFFIXES):
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
    with SafetensorsFile(ref.shard) as st:
        view = st.get(ref.name)
        matrices = view.reshape(-1, view.shape[-2], view.shape[-1])
        step = rows if rows > 0 else matrices.shape[1]
        for matrix in matrices:
            for lo in range(0, matrix.shape[0], step):
                yield matrix[lo : lo + step].astype(np.float32)
        del view, matrices


def _fp8_slabs(ref: TensorRef, rows: int) -> Iterator[np.ndarray]:
    """Like :func:`iter_slabs` for an FP8 tensor: its float32 dequantized values."""
    assert ref.checkpoint is not None
    reader = _fp8_reader(str(ref.checkpoint))
    n, lead = ref.shape[-2], int(np.prod(ref.shape[:-2], dtype=np.int64))
    step = rows if rows > 0 else n
    with SafetensorsFile(ref.shard) as st:
        for e in range(lead):
            for lo in range(0, n, step):
                yield reader.rows(st, ref.name, e, lo, min(n, lo + step))
