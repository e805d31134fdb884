"""FP8 block weights of any layout read back as float32 rows: ``decode(codes) * scale``
computed in float32 (never through bf16), for the converters, ``verify`` and ``report``."""

from __future__ import annotations

import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.pairs import find_fp8_weights, load_scale
from ue8m0.checkpoint.registry import element_fmt
from ue8m0.checkpoint.safetensors import SafetensorsFile
from ue8m0.checkpoint.source import Checkpoint


def dequantize_rows(
    codes: np.ndarray,
    scale: np.ndarray,
    block: tuple[int, int],
    fmt: str,
    r0: int,
    threads: int | None = None,
) -> np.ndarray:
    """float32 ``decode(codes) * scale`` of rows ``r0 : r0 + len(codes)`` of one matrix whose
    scale grid is ``scale`` (2-D, the whole matrix's)."""
    el = element_fmt(fmt)
    br, bc = block
    rows = codes.shape[-2]
    if r0 % br == 0:
        s = scale[r0 // br : -(-(r0 + rows) // br)]
        q = QuantizedTensor.from_stored(codes.view(el.dtype), s, el, block)
        return dequantize(q, np.float32, threads=threads)
    s = scale[(np.arange(r0, r0 + rows) // br)][:, np.arange(codes.shape[-1]) // bc]
    values = codes.view(el.dtype).astype(np.float32)
    return values * s.astype(np.float32)


class Fp8Reader:
    """Random access to the dequantized rows of a checkpoint's FP8 weights (one scale cached)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.weights = find_fp8_weights(ckpt)
        self._cached: tuple[str, np.ndarray] | None = None

    def scale(self, name: str) -> np.ndarray:
        if self._cached is None or self._cached[0] != name:
            self._cached = (name, load_scale(self.ckpt.root, self.weights[name]))
        return self._cached[1]

    def rows(self, f: SafetensorsFile, name: str, lead: int, r0: int, r1: int) -> np.ndarray:
        """float32 rows ``r0:r1`` of matrix ``lead`` of FP8 weight ``name`` (open in ``f``)."""
        w = self.weights[name]
        codes = f.read_rows(name, lead, r0, r1)
        return dequantize_rows(codes, self.scale(name)[lead], w.block, w.fmt, r0)
