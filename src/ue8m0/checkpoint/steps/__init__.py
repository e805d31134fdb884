"""The conversion steps, one table keyed by a task's ``action``.

Steps sit above the I/O layer (reader, slabs, writer) and below :mod:`ue8m0.checkpoint.convert`;
no step imports another command's step.
"""

from __future__ import annotations

from ue8m0.checkpoint.steps.context import Step, StepContext
from ue8m0.checkpoint.steps.copying import copy_step, drop_step
from ue8m0.checkpoint.steps.dequantizing import dequantize_step
from ue8m0.checkpoint.steps.fp4 import cast_fp4_step, quantize_fp4_step
from ue8m0.checkpoint.steps.fp8 import relayout_step, requantize_step
from ue8m0.checkpoint.steps.quantizing import quantize_step

#: task action -> the step that executes it
STEPS: dict[str, Step] = {
    "copy": copy_step,
    "drop": drop_step,
    "quantize": quantize_step,
    "dequantize": dequantize_step,
    "requantize": requantize_step,
    "relayout": relayout_step,
    "quantize_fp4": quantize_fp4_step,
    "cast_fp4": cast_fp4_step,
}
__all__ = ["STEPS", "Step", "StepContext"]
