"""ue8m0: FP8 with power-of-two (UE8M0) block scales, bit-exact with each convention, on any CPU.

>>> import numpy as np, ue8m0
>>> q = ue8m0.quantize(np.ones((2, 128), np.float32), block=(1, 128))
>>> q.scale_codes.ravel().tolist()   # 1 / 448 rounded up to a power of two: 2**-8
[119, 119]
>>> float(ue8m0.dequantize(q)[0, 0])
1.0
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ue8m0.api import DEFAULT_EPS, QuantizedTensor, dequantize, quantize
from ue8m0.errors import (
    BlockError,
    CheckpointError,
    FormatNameError,
    InputError,
    InputTypeError,
    NonFiniteError,
    Ue8m0Error,
)
from ue8m0.formats import (
    ELEMENT_FORMATS,
    FLOAT4_E2M1FN,
    FLOAT6_E2M3FN,
    FLOAT6_E3M2FN,
    FLOAT8_E4M3FN,
    FLOAT8_E4M3FNUZ,
    FLOAT8_E5M2,
    FLOAT8_E5M2FNUZ,
    UE8M0,
    ElementFormat,
    ScaleFormat,
    element_format,
)
from ue8m0.gemm import gemm
from ue8m0.policies import NonFinite, ScaleRule, ScaleSearch

try:
    __version__ = version("ue8m0")  # the one place it is set is pyproject.toml
except PackageNotFoundError:  # pragma: no cover - imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_EPS",
    "ELEMENT_FORMATS",
    "FLOAT4_E2M1FN",
    "FLOAT6_E2M3FN",
    "FLOAT6_E3M2FN",
    "FLOAT8_E4M3FN",
    "FLOAT8_E4M3FNUZ",
    "FLOAT8_E5M2",
    "FLOAT8_E5M2FNUZ",
    "UE8M0",
    "BlockError",
    "CheckpointError",
    "ElementFormat",
    "FormatNameError",
    "InputError",
    "InputTypeError",
    "NonFinite",
    "NonFiniteError",
    "QuantizedTensor",
    "ScaleFormat",
    "ScaleRule",
    "ScaleSearch",
    "Ue8m0Error",
    "dequantize",
    "element_format",
    "gemm",
    "quantize",
]
