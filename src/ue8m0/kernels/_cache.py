"""Keep numba's on-disk kernel cache honest.

numba keys a cached kernel on the file that defines it (its modification time and size), not on
the helpers it inlines from other files: after an upgrade or an edit that changes only
``_bits.py``, a stale compiled kernel would still load. So the cache directory carries a marker
with a digest of every source file of this package; when it differs, this package's cache files
are removed before any kernel is loaded, and numba compiles afresh (once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MARKER = "ue8m0-kernels.sha256"


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the names and bytes of the package's ``*.py`` files."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_dirs(dispatchers: Iterable[object]) -> set[Path]:
    """The directories numba caches these dispatchers in (its locator's choice)."""
    found = set()
    for dispatcher in dispatchers:
        path = getattr(getattr(dispatcher, "_cache", None), "_cache_path", None)
        if path:
            found.add(Path(path))
    return found


def invalidate_stale_cache(dispatchers: Iterable[object], package_dir: Path = PACKAGE_DIR) -> int:
    """Remove this package's cache files where the marker's digest is not the sources'; returns
    how many files were removed. A cache directory that cannot be written is left alone."""
    digest = source_digest(package_dir)
    stems = {p.stem for p in package_dir.glob("*.py")}
    removed = 0
    for directory in cache_dirs(dispatchers):
        marker = directory / MARKER
        try:
            if marker.read_text(encoding="ascii").strip() == digest:
                continue
        except OSError:
            pass
        try:
            for path in directory.glob("*.nb[ic]"):
                if path.name.split(".", 1)[0] in stems:
                    path.unlink(missing_ok=True)
                    removed += 1
            directory.mkdir(parents=True, exist_ok=True)
            marker.write_text(digest + "\n", encoding="ascii")
        except OSError:
            continue
    return removed
