"""DeepSeek-V4 FP4 numerics on one V4-Flash expert tensor: time per call, and GB/s of FP4 bytes.

One routed-expert ``w1`` of DeepSeek-V4-Flash: logical ``[2048, 4096]``, packed ``int8
[2048, 2048]`` (4 MB) with ``[2048, 128]`` UE8M0 scales, codes and scales random (seed 0, scale
bytes 112..126: every tile spans at most 14 binades, so is exact, like the release's; the
cast is also timed with bytes 100..126, where every tile gets the per-element loss check)::

    .venv/bin/python bench/bench_fp4.py [--repeat 20] [--threads N]

Prints median milliseconds for: unpack, dequantize to bf16, the FP4 -> FP8 cast (the relayout
step) with its lossy-tile check, and V4's FP4 quantization of the bf16 tensor. Prints only;
nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from ue8m0 import deepseek_v4 as v4
from ue8m0.fp4 import dequantize_fp4, unpack_fp4

OUT, IN = 2048, 4096


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default all)")
    args = parser.parse_args()
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (OUT, IN // 2), dtype=np.uint8).view(np.int8)
    scale = rng.integers(112, 127, (OUT, IN // 32), dtype=np.uint8)
    wide = rng.integers(100, 127, (OUT, IN // 32), dtype=np.uint8)
    weight = dequantize_fp4(packed, scale, ml_dtypes.bfloat16)
    cases: dict[str, Callable[[], Any]] = {
        "unpack_fp4": lambda: unpack_fp4(packed),
        "dequantize_fp4 -> bf16": lambda: dequantize_fp4(packed, scale, ml_dtypes.bfloat16),
        "cast_fp4_to_fp8_v4 (relayout)": lambda: v4.cast_fp4_to_fp8_v4(packed, scale),
        "cast, every tile checked": lambda: v4.cast_fp4_to_fp8_v4(packed, wide),
        "quantize_fp4_v4 (bf16 in)": lambda: v4.quantize_fp4_v4(weight),
    }
    print(f"one expert: packed {packed.shape} int8 = {packed.nbytes / 2**20:.0f} MiB")
    for name, fn in cases.items():
        ms = median_ms(fn, args.repeat)
        print(f"  {name:32s} {ms:8.2f} ms  {packed.nbytes / ms / 1e6:6.2f} GB/s of FP4 bytes")


if __name__ == "__main__":
    main()
