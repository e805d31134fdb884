"""Click parameter types shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class SourcePath(click.ParamType):
    """A checkpoint source: an existing path, or a Hub id (``org/name[@rev]``) already in the
    local Hugging Face cache (:func:`ue8m0.checkpoint.hub.resolve_source`; nothing is
    downloaded)."""

    name = "PATH|ORG/NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if isinstance(value, Path):
            return value
        from ue8m0.checkpoint.hub import resolve_source

        return resolve_source(str(value))


#: the type of every SRC / CKPT argument
SOURCE = SourcePath()
