"""The numba cache is dropped when any kernel source file changes (numba itself only watches the
file that defines a kernel, not the helpers it inlines)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import ue8m0.kernels as kernels
from ue8m0.kernels._cache import MARKER, PACKAGE_DIR, invalidate_stale_cache, source_digest


def _fake_dispatcher(path: Path) -> object:
    return SimpleNamespace(_cache=SimpleNamespace(_cache_path=str(path)))


def test_stale_files_of_this_package_are_removed(tmp_path: Path) -> None:
    ours = tmp_path / "_quant.quantize_kernel-1.py311.nbi"
    ours_data = tmp_path / "_quant.quantize_kernel-1.py311.1.nbc"
    theirs = tmp_path / "other_module.f-3.py311.nbi"
    for p in (ours, ours_data, theirs):
        p.write_bytes(b"x")
    dispatcher = _fake_dispatcher(tmp_path)
    assert invalidate_stale_cache([dispatcher]) == 2
    assert not ours.exists() and not ours_data.exists() and theirs.exists()
    assert (tmp_path / MARKER).read_text().strip() == source_digest()
    ours.write_bytes(b"x")  # fresh cache written under the current sources: kept
    assert invalidate_stale_cache([dispatcher]) == 0 and ours.exists()
    (tmp_path / MARKER).write_text("an older release\n")
    assert invalidate_stale_cache([dispatcher]) == 1 and not ours.exists()


def test_digest_covers_every_kernel_source(tmp_path: Path) -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = source_digest(tmp_path)
    helper = tmp_path / "_bits.py"
    helper.write_bytes(helper.read_bytes() + b"\n# an inlined helper changed\n")
    assert source_digest(tmp_path) != before


def test_the_real_cache_is_marked_with_the_current_sources() -> None:
    dirs = {Path(kernels.quantize_kernel._cache._cache_path)}
    for directory in dirs:
        assert (directory / MARKER).read_text().strip() == source_digest()
