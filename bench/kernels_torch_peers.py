"""Torch-side peers of ``bench_kernels.py``, run in a subprocess (``THP_MEM_ALLOC_ENABLE=1``).

Prints one JSON object: for each method and thread count the median seconds, the median of the
ue8m0 case it is compared with, timed in this process call by call in alternation with it
(``paired``), the share of output bytes equal to ue8m0's (same tensor, same rule), and
torch.compile's compile time.
Not a test and not imported by the package.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench_kernels import make_tensor, paired_times


def main() -> None:
    rows, cols, repeats = (int(a) for a in sys.argv[1:4])
    threads_list = sys.argv[4]
    out: dict[str, Any] = {"skipped": {}, "times": {}, "agree": {}, "versions": {}}
    try:
        import torch
    except ImportError:
        out["skipped"]["torch"] = "torch not installed"
        print(json.dumps(out))
        return
    import ue8m0

    out["versions"]["torch"] = torch.__version__
    x_np = make_tensor(rows, cols)
    x = torch.from_numpy(x_np.view(np.int16)).view(torch.bfloat16)

    def eager() -> torch.Tensor:  # DeepSeek-style 128x128 block quantization
        t = x.float().view(rows // 128, 128, cols // 128, 128)
        amax = t.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-4)
        ratio = amax / 448.0
        bits = ratio.view(torch.int32)
        exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)
        scale = (exp.clamp(1, 254) << 23).view(torch.float32)
        return (t / scale).to(torch.float8_e4m3fn).view(rows, cols)

    ref = ue8m0.quantize(x_np, (128, 128), "e4m3", "rceil", 1e-4).codes
    mx_ref = {
        mode: ue8m0.quantize(x_np, (1, 32), "e4m3", mode, 0.0).codes for mode in ("floor", "rceil")
    }
    fns: dict[str, Callable[[], Any]] = {"torch_eager": eager}
    compiled = torch.compile(eager)
    t0 = time.perf_counter()
    try:
        compiled()
        out["compile_s"] = time.perf_counter() - t0
        fns["torch_compile"] = compiled
    except Exception as exc:  # report, never fake
        out["skipped"]["torch_compile"] = f"failed: {type(exc).__name__}: {exc}"[:200]
    try:
        import torchao
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx

        out["versions"]["torchao"] = torchao.__version__
        for mode in ("floor", "rceil"):
            scaling = getattr(ScaleCalculationMode, mode.upper())
            fns[f"torchao_to_mx_{mode}"] = functools.partial(
                to_mx, x, torch.float8_e4m3fn, 32, scaling
            )
    except ImportError:
        out["skipped"]["torchao"] = "torchao not installed"

    codes = np.empty(x_np.shape, np.uint8)

    def ours(name: str, threads: int) -> Callable[[], Any]:
        """The ue8m0 case a peer is compared with (same rule, preallocated ``out=``)."""
        if name.startswith("torchao"):
            rule = name.rsplit("_", 1)[1]
            return functools.partial(
                ue8m0.quantize, x_np, (1, 32), "e4m3", rule, 0.0, out=codes, threads=threads
            )
        return functools.partial(
            ue8m0.quantize, x_np, (128, 128), "e4m3", "rceil", 1e-4, out=codes, threads=threads
        )

    out["paired"] = {}
    for threads in (int(t) for t in threads_list.split(",")):
        torch.set_num_threads(threads)
        for name, fn in fns.items():
            # the peer and its ue8m0 case alternate call by call: both see the same machine
            pair = paired_times({0: fn, 1: ours(name, threads)}, repeats)
            out["times"][f"{name}@{threads}"] = pair[0]
            out["paired"][f"{name}@{threads}"] = pair[1]
    for name, fn in fns.items():
        result = fn()
        if name.startswith("torchao"):
            codes = result[1].view(torch.uint8).numpy().reshape(rows, cols)
            want = mx_ref[name.rsplit("_", 1)[1]]
        else:
            codes = result.view(torch.uint8).numpy()
            want = ref
        out["agree"][name] = float(np.mean(codes == want))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
