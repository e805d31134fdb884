"""Progress of ``ue8m0 report``: one bar over the bytes of the measured tensors (bytes/s, ETA),
its label counting the tensors done. Drawn on an interactive stderr only, never under ``--json``
or ``--quiet``."""

from __future__ import annotations

import sys
from typing import Any


class ReportProgress:
    """The sink :func:`ue8m0.report.analysis.analyze_checkpoint` reports to; no-ops here."""

    def start(self, total_bytes: int, tensors: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def tensor_done(self) -> None: ...
    def close(self) -> None: ...


class BarReportProgress(ReportProgress):
    """A tqdm bar: tensors done of all, bytes read, bytes/s and the ETA."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # no monitor thread: a live thread would make the workers spawn instead of fork
        tqdm.monitor_interval = 0
        self._tqdm = tqdm
        self._bar: Any = None
        self._done = 0
        self._tensors = 0

    def _label(self) -> str:
        return f"{self._done}/{self._tensors} tensors"

    def start(self, total_bytes: int, tensors: int) -> None:
        self._tensors = tensors
        self._bar = self._tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self._label(),
            dynamic_ncols=True,
        )

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def tensor_done(self) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_description(self._label())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_report_progress(quiet: bool, as_json: bool) -> ReportProgress:
    """A bar on an interactive terminal, nothing under ``--quiet``/``--json`` or otherwise."""
    if quiet or as_json or not sys.stderr.isatty():
        return ReportProgress()
    return BarReportProgress()
