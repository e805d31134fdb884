"""Hugging Face Hub ids as sources, resolved from the local cache only (nothing is downloaded).

``SRC`` may be a path or ``org/name`` (optionally ``org/name@revision``). A path that exists
wins; otherwise an id is looked up in the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``)
through ``huggingface_hub`` with ``local_files_only=True``: the snapshot directory it returns is
what the commands open (its ``x -> ../../blobs/<hash>`` links are allowed by the opener).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType

from ue8m0.errors import CheckpointError
from ue8m0.extras import require

#: ``org/name`` or ``org/name@revision``, as the Hub spells repository ids
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(@(?P<rev>[\w./-]+))?$")


def resolve_source(text: str | Path) -> Path:
    """The local path of ``text``: itself when it exists, else a cached Hub snapshot."""
    path = Path(text)
    if path.exists():
        return path
    found = HUB_ID.match(str(text))
    if found is None or str(text).startswith(("./", "../", "/")):
        raise CheckpointError(text, "no such file or directory")
    hub = require("huggingface_hub", "hub")
    repo, rev = found.group("repo"), found.group("rev")
    try:
        snapshot = hub.snapshot_download(
            repo, revision=rev, local_files_only=True, cache_dir=_cache_dir(hub)
        )
    except Exception as exc:  # the library raises several kinds for "not in the cache"
        raise CheckpointError(
            text,
            f"neither a path nor a Hub id in the local cache ({type(exc).__name__}); ue8m0 "
            f"downloads nothing: fetch it first (hf download {repo})",
        ) from None
    return Path(snapshot)


def _cache_dir(hub: ModuleType) -> str:
    """The cache the environment names now (``huggingface_hub`` reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(hub.constants.HF_HUB_CACHE)
