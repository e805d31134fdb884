"""Block shapes over the last two dims, and the input coercion shared by every backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0.errors import BlockError, InputError, InputTypeError

#: named block shapes (``-1`` spans the whole dim)
NAMED_BLOCKS: dict[str, tuple[int, int]] = {
    "weight": (128, 128),
    "activation": (1, 128),
    "mx": (1, 32),
    "row": (1, -1),
    "tensor": (-1, -1),
}

BlockLike = tuple[int, int] | Sequence[int] | int | str


def parse_block(block: BlockLike) -> tuple[int, int]:
    """Normalise a block spec to ``(rows, cols)``.

    Accepts a pair of positive ints (``-1`` = the whole dim: ``(1, -1)`` is per row,
    ``(-1, -1)`` per tensor), a single int ``n`` meaning ``(1, n)``, a string ``"128x128"``,
    or a name from :data:`NAMED_BLOCKS`.
    """
    if isinstance(block, str):
        text = block.strip().lower()
        if text in NAMED_BLOCKS:
            return NAMED_BLOCKS[text]
        parts = text.replace("×", "x").split("x")
        try:
            return parse_block(tuple(int(p) for p in parts))
        except ValueError:
            raise BlockError(
                f"block {block!r}: expected 'RxC' or one of {sorted(NAMED_BLOCKS)}"
            ) from None
    if isinstance(block, (int, np.integer)) and not isinstance(block, bool):
        return parse_block((1, int(block)))
    try:
        items = tuple(block)  # type: ignore[arg-type]
    except TypeError:
        raise BlockError(f"block {block!r}: expected (rows, cols)") from None
    if len(items) != 2:
        raise BlockError(f"block {block!r}: expected 2 sizes (rows, cols), got {len(items)}")
    out = []
    for size in items:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise BlockError(f"block {block!r}: sizes must be integers, got {size!r}")
        if size <= 0 and size != -1:
            raise BlockError(f"block {block!r}: sizes must be positive (or -1 for a whole dim)")
        out.append(int(size))
    return out[0], out[1]


def resolve_block(block: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int]:
    """Replace ``-1`` by the extent of the dim (at least 1)."""
    rows, cols = shape[-2], shape[-1]
    return (
        max(rows, 1) if block[0] == -1 else block[0],
        max(cols, 1) if block[1] == -1 else block[1],
    )


def scale_grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the scale tensor: leading dims + ``ceil(shape[-2:] / block)``."""
    br, bc = resolve_block(block, shape)
    return (*shape[:-2], math.ceil(shape[-2] / br), math.ceil(shape[-1] / bc))


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (numpy array or torch tensor) with a supported float dtype.

    float32, float16 and bfloat16 are taken as they are; float64 is rounded to float32 first
    (as ``torch.Tensor.float()`` would). Anything else is a clear error.
    """
    if type(x).__module__.startswith("torch"):
        x = _torch_to_numpy(x)
    if not isinstance(x, np.ndarray):
        raise InputTypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if x.dtype not in _FLOAT_DTYPES:
        raise InputTypeError(
            f"input dtype {x.dtype} is not supported: use float32, float16 or bfloat16"
        )
    if x.ndim < 2:
        raise InputError(
            f"input must have at least 2 dims (rows, cols), got shape {x.shape}; "
            "reshape a vector to (1, n)"
        )
    if x.size == 0:
        raise InputError(f"input is empty (shape {x.shape})")
    return x


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"expected a tensor, got {type(t).__name__}")
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype in (torch.float32, torch.float16, torch.float64):
        return t.numpy()
    raise InputTypeError(
        f"input dtype {t.dtype} is not supported: use float32, float16 or bfloat16"
    )
