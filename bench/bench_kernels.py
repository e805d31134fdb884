"""Quantize/dequantize kernel benchmark: ue8m0 fast path vs memory copy, oracle and peers.

One command, one run, one tensor (``randn(4096, 14336) * 0.02`` as bf16, seed 0)::

    .venv/bin/python bench/bench_kernels.py            # full run, rewrites docs/benchmarks.md
    .venv/bin/python bench/bench_kernels.py --quick    # small tensor, prints only

Measures at 1 and 2 threads: ``np.copyto`` (a numba parallel copy at 2 threads), the ue8m0
fast path (128x128 rceil, 1x32 rceil/floor, dequantize to bf16/f32; each with a fresh
output per call and with a reused ``out=`` buffer), the numpy oracle, the
ml_dtypes ``astype`` pipeline, and, in a subprocess with ``THP_MEM_ALLOC_ENABLE=1``, torch
eager / torch.compile DeepSeek-style 128x128 and torchao ``to_mx`` 1x32. Every fast result is
checked byte for byte against the oracle. Then first-call latency (cold/warm numba cache) and
peak extra memory, each in a fresh process. Writes the section "## Quantize/dequantize kernels"
of ``docs/benchmarks.md`` (other sections are kept) and ``docs/img/bench_kernels.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import ue8m0

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kernels_report import write_report  # noqa: E402

THREADS = (1, 2)


def median_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls (after one warm-up call)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired_times(fns: dict[int, Callable[[], Any]], repeats: int) -> dict[int, float]:
    """Median seconds per key (a thread count, or a peer and ours), calls alternating.

    On a shared machine another job can take a core for a while; alternating gives every
    function the same share of that noise, so their ratio stays meaningful.
    """
    for fn in fns.values():
        fn()
    times: dict[int, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for n, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(ts) for n, ts in times.items()}


def make_tensor(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)


def _parallel_copy() -> Callable[[np.ndarray, np.ndarray], None]:
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def copy(dst: np.ndarray, src: np.ndarray) -> None:  # pragma: no cover - jitted
        for r in prange(src.shape[0]):
            dst[r] = src[r]

    return copy


def ml_dtypes_pipeline(x: np.ndarray) -> np.ndarray:
    """bf16 -> f32, 128x128 amax, power-of-two ratio, divide, ``astype(float8_e4m3fn)``."""
    rows, cols = x.shape
    x32 = x.astype(np.float32).reshape(rows // 128, 128, cols // 128, 128)
    amax = np.maximum(np.abs(x32).max(axis=(1, 3), keepdims=True), np.float32(1e-4))
    scale = np.exp2(np.ceil(np.log2(amax / np.float32(448)))).astype(np.float32)
    return (x32 / scale).astype(ml_dtypes.float8_e4m3fn).reshape(rows, cols)


FRESH, PRE = " (fresh output)", " (preallocated out=)"


def fast_cases(x: np.ndarray) -> dict[str, Callable[[int], Any]]:
    """ue8m0 cases, each twice: allocating its output per call, and into a reused ``out=``."""
    q128 = ue8m0.quantize(x, (128, 128))
    codes = np.empty(x.shape, np.uint8)
    bf16 = np.empty(x.shape, ml_dtypes.bfloat16)
    f32 = np.empty(x.shape, np.float32)
    base: dict[str, Callable[..., Any]] = {
        "ue8m0 quantize 128x128 rceil": lambda n, out: ue8m0.quantize(
            x, (128, 128), out=codes if out else None, threads=n
        ),
        "ue8m0 quantize 1x32 rceil": lambda n, out: ue8m0.quantize(
            x, (1, 32), eps=0.0, out=codes if out else None, threads=n
        ),
        "ue8m0 quantize 1x32 floor": lambda n, out: ue8m0.quantize(
            x, (1, 32), scale_rule="floor", eps=0.0, out=codes if out else None, threads=n
        ),
        "ue8m0 dequantize e4m3 -> bf16": lambda n, out: ue8m0.dequantize(
            q128, ml_dtypes.bfloat16, out=bf16 if out else None, threads=n
        ),
        "ue8m0 dequantize e4m3 -> f32": lambda n, out: ue8m0.dequantize(
            q128, np.float32, out=f32 if out else None, threads=n
        ),
    }
    cases: dict[str, Callable[[int], Any]] = {}
    for name, fn in base.items():
        cases[name + PRE] = functools.partial(fn, out=True)
        cases[name + FRESH] = functools.partial(fn, out=False)
    return cases


def check_identical(x: np.ndarray, oracle_128: Any) -> dict[str, str]:
    """Fast vs oracle, byte for byte, on the whole tensor (``oracle_128``: already computed)."""
    verdict = {}
    cases = [((128, 128), "rceil", 1e-4), ((1, 32), "rceil", 0.0), ((1, 32), "floor", 0.0)]
    for block, rule, eps in cases:
        fast = ue8m0.quantize(x, block, scale_rule=rule, eps=eps)
        into = ue8m0.quantize(x, block, scale_rule=rule, eps=eps, out=np.empty(x.shape, np.uint8))
        if block == (128, 128):
            slow = oracle_128
        else:
            slow = ue8m0.quantize(x, block, scale_rule=rule, eps=eps, backend="reference")
        same = fast.codes.tobytes() == slow.codes.tobytes()
        same &= fast.scale.tobytes() == slow.scale.tobytes()
        same &= into.codes.tobytes() == slow.codes.tobytes()
        for dtype in (ml_dtypes.bfloat16, np.float32):
            a = ue8m0.dequantize(fast, dtype)
            b = ue8m0.dequantize(fast, dtype, backend="reference")
            c = ue8m0.dequantize(fast, dtype, out=np.empty(x.shape, dtype))
            same &= a.tobytes() == b.tobytes() == c.tobytes()
        verdict[f"{block[0]}x{block[1]} {rule}"] = "identical" if same else "DIFFERENT"
        if not same:
            raise SystemExit(f"fast path differs from the oracle for {block} {rule}")
    return verdict


def run_subprocess(code: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


LATENCY = """
import json, time
t0 = time.perf_counter()
import numpy as np, ml_dtypes, ue8m0
t1 = time.perf_counter()
x = np.ones((256, 256), dtype=ml_dtypes.bfloat16)
q = ue8m0.quantize(x, (128, 128))
t2 = time.perf_counter()
ue8m0.dequantize(q, ml_dtypes.bfloat16)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "quantize": t2 - t1, "dequantize": t3 - t2}))
"""


def first_call_latency() -> dict[str, dict[str, float]]:
    """Fresh processes: cold (empty numba cache: compiles) and warm (cache on disk)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = run_subprocess(LATENCY, env)
        warm = [run_subprocess(LATENCY, env) for _ in range(3)]
    warm_med = {k: statistics.median(w[k] for w in warm) for k in warm[0]}
    return {"cold": cold, "warm": warm_med}


MEMORY = """
import json, resource, sys, tracemalloc
import numpy as np, ml_dtypes, ue8m0
rows, cols, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
x = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
ue8m0.quantize(x[:256], (128, 128), backend=backend)  # load kernels first
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
    f.write("5")
base = rss()
tracemalloc.start()
q = ue8m0.quantize(x, (128, 128), backend=backend)
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
out = q.data.nbytes + q.scale.nbytes + q.scale_codes.nbytes
print(json.dumps({"outputs": out, "traced_peak": traced, "rss_peak_delta": rss() - base}))
"""


def peak_memory(rows: int, cols: int) -> dict[str, dict[str, int]]:
    result = {}
    for backend in ("fast", "reference"):
        code = f"import sys; sys.argv = ['m', '{rows}', '{cols}', '{backend}']\n" + MEMORY
        result[backend] = run_subprocess(code)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512x1024, no docs written")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--oracle-repeats", type=int, default=2)
    args = parser.parse_args()
    rows, cols = (512, 1024) if args.quick else (4096, 14336)
    started = time.perf_counter()
    x = make_tensor(rows, cols)
    mb = x.nbytes / 1e6
    times: dict[str, dict[int, float]] = {}

    dst = np.empty_like(x)
    pcopy = _parallel_copy()
    import numba

    def copy_with(n: int) -> None:
        if n == 1:
            np.copyto(dst, x)
        else:
            numba.set_num_threads(n)
            pcopy(dst.view(np.uint16), x.view(np.uint16))

    times["np.copyto (memory bandwidth proxy)"] = paired_times(
        {n: functools.partial(copy_with, n) for n in THREADS}, args.repeats
    )
    fresh = {
        "e4m3 codes": lambda: np.empty(x.shape, np.uint8).fill(0),
        "bf16 output": lambda: np.empty(x.shape, np.uint16).fill(0),
    }
    alloc_s = {k: median_time(fn, args.repeats) for k, fn in fresh.items()}
    for name, fn in fast_cases(x).items():
        times[name] = paired_times({n: functools.partial(fn, n) for n in THREADS}, args.repeats)
    kept: list[Any] = []
    times["ue8m0 oracle (numpy) 128x128 rceil"] = {
        1: median_time(
            lambda: kept.append(ue8m0.quantize(x, (128, 128), backend="reference")),
            args.oracle_repeats,
            warmup=False,
        )
    }
    times["ml_dtypes pipeline 128x128"] = {
        1: median_time(lambda: ml_dtypes_pipeline(x), args.repeats)
    }
    print(
        f"[{time.perf_counter() - started:.0f}s] ue8m0 and numpy done; torch peers...", flush=True
    )
    peers = run_subprocess_peers(rows, cols, args.repeats)
    for key, seconds in peers.get("times", {}).items():
        name, n = key.rsplit("@", 1)
        times.setdefault(PEER_NAMES[name], {})[int(n)] = seconds
    print(f"[{time.perf_counter() - started:.0f}s] checking against the oracle...", flush=True)
    identical = check_identical(x, kept[-1])
    kept.clear()
    print(f"[{time.perf_counter() - started:.0f}s] latency and memory...", flush=True)
    latency = first_call_latency()
    memory = peak_memory(rows, cols)
    results = {
        "shape": [rows, cols],
        "mb": mb,
        "repeats": args.repeats,
        "oracle_repeats": args.oracle_repeats,
        "times": {k: {str(n): v for n, v in d.items()} for k, d in times.items()},
        "peers": peers,
        "identical": identical,
        "latency": latency,
        "memory": memory,
        "alloc_s": alloc_s,
        "wall_s": time.perf_counter() - started,
    }
    write_report(results, ROOT, write_docs=not args.quick)


PEER_NAMES = {
    "torch_eager": "torch eager DeepSeek 128x128",
    "torch_compile": "torch.compile DeepSeek 128x128",
    "torchao_to_mx_floor": "torchao to_mx 1x32 floor",
    "torchao_to_mx_rceil": "torchao to_mx 1x32 rceil",
}


def run_subprocess_peers(rows: int, cols: int, repeats: int) -> Any:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1", TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp())
    script = HERE / "kernels_torch_peers.py"
    args = [sys.executable, str(script), str(rows), str(cols), str(repeats), "1,2"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"skipped": {"torch peers": f"failed: {done.stderr.strip()[-300:]}"}}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
