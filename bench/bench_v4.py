"""DeepSeek-V4 conversions on a generated V4-shaped checkpoint: many routed-expert tensors of
about 4 MB each, against the same bytes held in a few large tensors, in the same run.

* ``quantize --format deepseek-v4``: BF16 experts [1024, 2048] (4 MiB each) -> packed FP4;
* ``relayout --to fp8``: packed FP4 experts [2048, 2048] (2 MiB + scales; 4 MiB of FP8 out)
  -> FP8 E4M3 with 128x128 F8_E8M0 scales.

Each is timed on N small experts and on the same bytes in 8 large experts (per-tensor overhead
is the gap); ``--workers 2``; the GB/s is the command's own (``--json``: converted input bytes
over its seconds), the median of ``--runs`` runs, each after ``sync``. Not a test. Run:

    .venv/bin/python bench/bench_v4.py [--experts 512] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter

CONFIG = {
    "model_type": "deepseek_v4",
    "expert_dtype": "fp4",
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "scale_fmt": "ue8m0",
        "weight_block_size": [128, 128],
    },
}


def _write_shards(root: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]]) -> None:
    """Write ``(name, tag, shape, fill)`` tensors, ~1 GiB per shard, and the index."""
    root.mkdir(parents=True)
    shards: list[list[tuple[str, str, tuple[int, ...], np.ndarray]]] = [[]]
    size = 0
    for t in tensors:
        if size > 2**30:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t[3].nbytes
    weight_map = {}
    for i, group in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        specs = [OutSpec(n, tag, shape) for n, tag, shape, _ in group]
        with SafetensorsWriter(root / name, specs, {"format": "pt"}) as out:
            for n, _, _, data in group:
                out.write(n, data)
                weight_map[n] = name
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


def _experts(count: int, rows: int) -> list[str]:
    return [f"layers.{e // 64}.ffn.experts.{e % 64}.w1.weight" for e in range(count)][:count]


def generate_bf16(root: Path, count: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((rows, cols)) * 0.02).astype(ml_dtypes.bfloat16)
    _write_shards(root, [(n, "BF16", (rows, cols), data) for n in _experts(count, rows)])
    (root / "config.json").write_text(json.dumps({"model_type": "deepseek_v4"}))


def generate_fp4(root: Path, count: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(1)
    packed = rng.integers(-128, 128, (rows, cols // 2), dtype=np.int8)
    scale = rng.integers(118, 126, (rows, cols // 32), dtype=np.uint8).view(
        ml_dtypes.float8_e8m0fnu
    )
    tensors = []
    for n in _experts(count, rows):
        tensors.append((n, "I8", packed.shape, packed))
        tensors.append((n[: -len(".weight")] + ".scale", "F8_E8M0", scale.shape, scale))
    _write_shards(root, tensors)
    (root / "config.json").write_text(json.dumps(CONFIG))


def run(args: list[str]) -> float:
    subprocess.run(["sync"], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", *args, "--json", "--workers", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out)["input_gb_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=512, help="small expert tensors (4 MiB each)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ue8m0-bench-v4-", dir=a.dir))
    scale = a.experts // 8  # the same bytes in 8 large tensors
    cases = {
        "quantize --format deepseek-v4": (
            generate_bf16,
            1024,
            2048,
            ["quantize"],
            ["--format", "deepseek-v4"],
        ),
        "relayout --to fp8": (generate_fp4, 2048, 2048, ["relayout"], ["--to", "fp8"]),
    }
    results: dict[str, dict[str, float]] = {}
    try:
        for label, (gen, rows, cols, cmd, flags) in cases.items():
            row: dict[str, float] = {}
            for kind, count, r in (("small", a.experts, rows), ("large", 8, rows * scale)):
                src = base / f"{cmd[0]}-{kind}"
                gen(src, count, r, cols)
                speeds = []
                for i in range(a.runs):
                    dst = base / f"{cmd[0]}-{kind}-out{i}"
                    speeds.append(run([*cmd, str(src), str(dst), *flags]))
                    shutil.rmtree(dst)
                row[kind] = statistics.median(speeds)
                shutil.rmtree(src)
            row["ratio"] = row["small"] / row["large"]
            results[label] = row
            print(
                f"{label}: {a.experts} tensors {row['small']:.3f} GB/s, 8 tensors "
                f"{row['large']:.3f} GB/s, ratio {row['ratio']:.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"cpus": os.cpu_count(), "experts": a.experts, "results": results}))


if __name__ == "__main__":
    main()
