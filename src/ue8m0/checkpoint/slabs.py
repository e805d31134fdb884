"""How tensors are cut for streaming: slabs of whole block-rows, and copy chunks.

Blocks never straddle slabs, so converting slab by slab gives the bytes of converting the whole
tensor at once, with memory bounded by one slab.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

#: target bytes of input per slab
SLAB_BYTES = 32 * 1024 * 1024
#: bytes per piece when a tensor is copied as it is
COPY_BYTES = 64 * 1024 * 1024


def slabs(
    shape: tuple[int, ...], itemsize: int, block_rows: int, target: int = SLAB_BYTES
) -> Iterator[tuple[int, int, int]]:
    """``(lead, r0, r1)`` slabs of whole block-rows covering a (..., rows, cols) tensor."""
    rows, cols = shape[-2], shape[-1]
    lead = math.prod(shape[:-2])
    per_row = max(1, cols * itemsize)
    step = max(block_rows, (target // per_row) // block_rows * block_rows)
    for e in range(lead):
        for r0 in range(0, rows, step):
            yield e, r0, min(rows, r0 + step)


def copy_pieces(nbytes: int, piece: int = COPY_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` byte ranges of at most ``piece`` bytes covering ``nbytes``."""
    for start in range(0, nbytes, piece):
        yield start, min(nbytes, start + piece)
