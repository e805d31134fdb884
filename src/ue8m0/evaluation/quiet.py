"""Third-party noise kept from the user's view for the length of an eval run.

Loading a model through transformers imports torchao, which logs the CUDA extensions it could not
load and makes torch log ``W1201`` deprecations about its enums; transformers logs config remarks
and draws its own "Loading weights" bar. None of it is actionable by an ``ue8m0 eval`` user, so
:func:`third_party_quiet` raises those libraries' loggers to ERROR, ignores the warnings they
issue and turns transformers' bars off, and puts everything back on exit. With ``UE8M0_DEBUG``
set it changes nothing.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: libraries whose log records below ERROR and whose warnings are hidden
THIRD_PARTY = ("torch", "torchao", "transformers", "accelerate", "huggingface_hub", "safetensors")


def _transformers_bars() -> object | None:
    """transformers' logging module (its progress-bar switch), when transformers is installed."""
    try:
        return importlib.import_module("transformers.utils.logging")
    except ImportError:
        return None


@contextmanager
def third_party_quiet() -> Iterator[None]:
    """Hide :data:`THIRD_PARTY` warnings, log records below ERROR and transformers' progress bars
    inside the block (unless ``UE8M0_DEBUG`` is set); restore every setting on exit."""
    if os.environ.get("UE8M0_DEBUG"):
        yield
        return
    try:
        # torch sets its loggers' levels when it is imported: import it first, then override
        importlib.import_module("torch")
    except ImportError:
        pass
    loggers = [logging.getLogger(name) for name in THIRD_PARTY]
    levels = [logger.level for logger in loggers]
    bars: object | None = _transformers_bars()
    bars_on = bool(bars is not None and bars.is_progress_bar_enabled())  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        for name in THIRD_PARTY:
            warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        if bars_on:
            bars.disable_progress_bar()  # type: ignore[union-attr]
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            if bars_on:
                bars.enable_progress_bar()  # type: ignore[union-attr]
