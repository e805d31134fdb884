"""``ue8m0 report``: what each quantization recipe costs, tensor by tensor, for a checkpoint.

:mod:`.source` lists a checkpoint's tensors, :mod:`.analysis` streams them through the recipes
and accumulates the metrics of :mod:`ue8m0.metrics`, :mod:`.text` prints the terminal table and
the JSON document, :mod:`.plots` draws the PNGs and :mod:`.html` writes the HTML page.
"""

from __future__ import annotations

from ue8m0.report.analysis import CheckpointReport, analyze_array, analyze_checkpoint

__all__ = ["CheckpointReport", "analyze_array", "analyze_checkpoint"]
