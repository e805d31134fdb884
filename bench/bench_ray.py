"""``ue8m0 quantize --ray`` on a one-node Ray cluster started on 127.0.0.1 with 1 and with 2
CPUs, beside the local ``--workers 1`` / ``2`` runs, on a generated BF16 checkpoint (8 shards of
32 MiB by default) from a warm page cache. Prints one JSON line per run and a table.

One machine cannot show network scaling: this measures what Ray's scheduling and the per-task
worker start cost against local processes, and whether two task slots use two cores. The
cluster listens on the loopback address only (tests/ray_cluster.py).

Not a test. Run:  .venv/bin/python bench/bench_ray.py [--shards 8] [--mib 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ray_cluster import LOOPBACK_ENV, LoopbackCluster


def generate(root: Path, shards: int, mib: int) -> None:
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = mib * 2**20 // (2 * 4096) // 128 * 128
    base = (rng.standard_normal((rows, 4096)) * 0.02).astype(ml_dtypes.bfloat16)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensor = f"model.layers.{i}.mlp.up_proj.weight"
        save_file({tensor: base}, str(root / name), metadata={"format": "pt"})
        weight_map[tensor] = name
    index = {"metadata": {"total_size": shards * base.nbytes}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text('{"model_type": "llama"}')


def run(src: Path, dst: Path, *extra: str) -> dict[str, object]:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", "quantize", str(src), str(dst), *extra, "--json"],
        env={**os.environ, **LOOPBACK_ENV},
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    out: dict[str, object] = json.loads(done.stdout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ue8m0-bench-ray-"))
    rows = []
    try:
        src = work / "src"
        generate(src, args.shards, args.mib)
        configs: list[tuple[str, list[str], int]] = [
            ("local --workers 1", [], 0),
            ("local --workers 2", ["--workers", "2"], 0),
            ("ray, 1 CPU", [], 1),
            ("ray, 2 CPUs", [], 2),
        ]
        for label, extra, cpus in configs:
            cluster = LoopbackCluster(work / f"ray{cpus}", num_cpus=cpus) if cpus else None
            if cluster is not None:
                cluster.start()
                cluster.check_loopback()
                extra = ["--ray", cluster.address]
            try:
                run(src, work / "warm", *extra)  # kernels compiled, workers started once
                best = min(
                    (run(src, work / "dst", *extra) for _ in range(args.repeat)),
                    key=lambda r: float(r["seconds"]),  # type: ignore[arg-type]
                )
            finally:
                if cluster is not None:
                    cluster.stop()
            print(json.dumps({"config": label, **best}))
            rows.append((label, best["seconds"], best["input_gb_per_s"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.shards} shards x {args.mib} MiB BF16, best of {args.repeat}, {os.cpu_count()} cores"
    )
    print(f"{'config':<20} {'seconds':>8} {'GB/s in':>8}")
    for label, seconds, rate in rows:
        print(f"{label:<20} {seconds:>8} {rate:>8}")


if __name__ == "__main__":
    main()
