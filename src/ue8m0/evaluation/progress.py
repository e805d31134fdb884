"""Progress of an eval run: one step per batch (sentence batch or perplexity window) of every
model measured, the unquantized one first, then each recipe in each mode."""

from __future__ import annotations

import sys
from typing import Any


class EvalProgress:
    """What :func:`ue8m0.evaluation.runner.run_eval` reports; this base class shows nothing."""

    def start(self, total: int) -> None:
        """``total`` batches will be run."""

    def stage(self, label: str) -> None:
        """The model now measured (``unquantized``, ``W8 rceil``, ...)."""

    def step(self) -> None:
        """One batch done."""

    def close(self) -> None:
        """The run is over (or failed)."""


class BarEvalProgress(EvalProgress):
    """A tqdm bar on stderr over every batch of the run, labelled with the model measured."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None

    def start(self, total: int) -> None:
        self._bar = self._tqdm(total=total, unit="batch", dynamic_ncols=True, leave=False)

    def stage(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description(label)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_eval_progress(quiet: bool) -> EvalProgress:
    """A bar on an interactive terminal unless ``quiet``; nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        return EvalProgress()
    return BarEvalProgress()
