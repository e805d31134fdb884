"""The writer's streamed CRC-32 (combined from its pieces) equals the CRC of the file it wrote."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter, crc32_combine, file_checksum


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=300), b=st.binary(max_size=3000))
def test_crc32_combine_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5),
    pieces=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_streamed_checksum_equals_file_checksum(
    tmp_path_factory: object, sizes: list[int], pieces: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    path = Path(tmp_path_factory.mktemp("w")) / "out.safetensors"  # type: ignore[attr-defined]
    specs = [OutSpec(f"t{i}", "F32" if i % 2 else "U8", (n,)) for i, n in enumerate(sizes)]
    data = {
        s.name: rng.integers(0, 255, s.shape, dtype=np.uint8).view(np.uint8)
        if s.dtype == "U8"
        else rng.standard_normal(s.shape).astype(np.float32)
        for s in specs
    }
    with SafetensorsWriter(path, specs, {"format": "pt"}) as out:
        for spec in reversed(specs):  # written out of file order, in several pieces
            for part in np.array_split(data[spec.name], pieces):
                out.write(spec.name, part)
    assert out.checksum == file_checksum(path)
    assert out.size == path.stat().st_size
