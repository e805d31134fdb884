"""Per-tensor error of one checkpoint's weights against another's (streamed in slabs).

Used by ``ue8m0 demo`` to summarise a quantize -> dequantize pipeline; the metrics are those
of vLLM PR #58157 (relative Frobenius error, cosine, max abs error) plus SQNR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.checkpoint.safetensors import FLOAT_TAGS
from ue8m0.checkpoint.slabs import slabs
from ue8m0.checkpoint.source import open_checkpoint


@dataclass
class TensorError:
    name: str
    shape: tuple[int, ...]
    rel_frobenius: float
    sqnr_db: float
    cosine: float
    max_abs: float
    err_sq: float
    ref_sq: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finish(name: str, shape: tuple[int, ...], sums: np.ndarray, worst: float) -> TensorError:
    err2, ref2, got2, dot = (float(v) for v in sums)
    rel = math.sqrt(err2 / ref2) if ref2 else 0.0
    sqnr = 10 * math.log10(ref2 / err2) if err2 else math.inf
    cos = dot / math.sqrt(ref2 * got2) if ref2 and got2 else 1.0
    return TensorError(name, shape, rel, sqnr, cos, worst, err2, ref2)


def compare_tensors(
    reference: str | Path, candidate: str | Path, names: list[str] | None = None
) -> list[TensorError]:
    """Errors of ``candidate``'s float tensors against ``reference``'s (same names and shapes)."""
    ref_ckpt, cand_ckpt = open_checkpoint(reference), open_checkpoint(candidate)
    wanted = (
        names
        if names is not None
        else [
            n
            for n, t in cand_ckpt.tensors.items()
            if t.dtype in FLOAT_TAGS and len(t.shape) >= 2 and n in ref_ckpt.tensors
        ]
    )
    out = []
    for name in wanted:
        info = cand_ckpt.tensors[name]
        sums = np.zeros(4, np.float64)
        worst = 0.0
        with (
            ref_ckpt.open(ref_ckpt.weight_map[name]) as r,
            cand_ckpt.open(cand_ckpt.weight_map[name]) as c,
        ):
            for lead, r0, r1 in slabs(info.shape, 4, 1):
                x = r.read_rows(name, lead, r0, r1).astype(np.float64)
                y = c.read_rows(name, lead, r0, r1).astype(np.float64)
                d = y - x
                sums += (np.sum(d * d), np.sum(x * x), np.sum(y * y), np.sum(x * y))
                worst = max(worst, float(np.max(np.abs(d))) if d.size else 0.0)
        out.append(_finish(name, info.shape, sums, worst))
    return out


def total_error(errors: list[TensorError]) -> dict[str, float]:
    """Relative Frobenius error and SQNR over all the tensors together."""
    err2 = sum(e.err_sq for e in errors)
    ref2 = sum(e.ref_sq for e in errors)
    return {
        "rel_frobenius": math.sqrt(err2 / ref2) if ref2 else 0.0,
        "sqnr_db": 10 * math.log10(ref2 / err2) if err2 else math.inf,
    }
