"""Optional dependencies (the ``eval`` and ``plot`` extras), imported only when they are used."""

from __future__ import annotations

import importlib
from types import ModuleType

from ue8m0.errors import Ue8m0Error


class MissingExtraError(Ue8m0Error, ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'ue8m0[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{top} is needed for this and is not installed ({exc}): pip install 'ue8m0[{extra}]'"
        ) from None


def figure(width: float = 8.0, height: float = 4.5) -> object:
    """A new matplotlib Figure drawn by the Agg backend (no pyplot, no global state)."""
    require("matplotlib", "plot")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")
