"""``ue8m0 report`` (all default recipes) against one ``ue8m0 quantize`` of the same generated
~200 MB BF16 Llama-style checkpoint: median seconds over ``--runs`` runs of each, in the same
process run (alternating, from a warm page cache), at ``--workers 1`` and ``2``; the ratio
report / quantize is the figure of merit (issue 18: at most 8).

Each run is a fresh ``python -c`` process calling the CLI (imports and the kernel cache load
included, as a user sees it). Not a test. Run:

    .venv/bin/python bench/bench_report.py [--runs 3] [--workers 1 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_checkpoint as big  # the same generator and page-cache warmer (bench/ is on sys.path)
from bench_checkpoint import warm
from ue8m0.recipes import DEFAULT_RECIPES

HIDDEN, INTER, LAYERS, VOCAB = 2048, 5632, 2, 4096

CLI = "import sys\nfrom ue8m0.cli.main import main\nmain(sys.argv[1:])\n"


def generate(root: Path) -> int:
    """bench_checkpoint's Llama-shaped BF16 checkpoint at this module's (smaller) sizes."""
    big.HIDDEN, big.INTER, big.LAYERS, big.VOCAB = HIDDEN, INTER, LAYERS, VOCAB
    return big.generate(root)


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ue8m0 {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument("--runs", type=int, default=3, help="median of N runs per command")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ue8m0-bench-report-", dir=args.dir))
    try:
        src = base / "src"
        size = generate(src)
        print(f"checkpoint: {size / 1e6:.0f} MB BF16, {LAYERS} shards", flush=True)
        print(f"recipes: {', '.join(DEFAULT_RECIPES)}", flush=True)
        # compile (or load) every kernel once, outside the timings
        timed(["quantize", str(src), str(base / "warm"), "-q"])
        timed(["report", str(src), "--json", "--include", "*.q_proj.*"])
        rows = {}
        for w in args.workers:
            times: dict[str, list[float]] = {"quantize": [], "report": []}
            for _ in range(args.runs):  # alternating: both see the same machine load
                dst = base / "dst"
                shutil.rmtree(dst, ignore_errors=True)
                os.sync()
                warm(src)
                q = ["quantize", str(src), str(dst), "-q", "--workers", str(w)]
                times["quantize"].append(timed(q))
                warm(src)
                r = ["report", str(src), "--json", "--workers", str(w)]
                times["report"].append(timed(r))
            quant = statistics.median(times["quantize"])
            rep = statistics.median(times["report"])
            rows[w] = {
                "quantize_s": round(quant, 2),
                "report_s": round(rep, 2),
                "ratio": round(rep / quant, 2),
                "runs": {k: [round(t, 2) for t in v] for k, v in times.items()},
            }
            print(
                f"--workers {w}: quantize {quant:.2f} s, report {rep:.2f} s, "
                f"ratio {rep / quant:.2f} (runs {rows[w]['runs']})",
                flush=True,
            )
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        print(json.dumps({"bytes": size, "machine": machine, "workers": rows}, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
