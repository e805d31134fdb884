"""End-to-end ``ue8m0 quantize`` on a generated >= 2 GB BF16 Llama-style checkpoint, from a warm
page cache: GB/s of input and peak RSS at ``--workers 1`` and ``2``, beside llm-compressor's
``model_free_ptq(scheme="FP8_BLOCK")`` on CPU on the same checkpoint in the same run. Every
timed run starts after ``sync``: no earlier run's output is still being written back to disk
(the kernel would throttle this run's writes for it).

Not a test. Run:  .venv/bin/python bench/bench_checkpoint.py [--llmc-python PY] [--dir DIR]

``--llmc-python`` is a Python with ``llmcompressor`` importable (it pins an older transformers
than this project's dev environment, so it usually lives in its own venv); without it the
comparison is reported as skipped, never estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ue8m0.checkpoint.dropbehind import DropBehind
from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter

HIDDEN, INTER, LAYERS, VOCAB = 4096, 11008, 6, 8192

# a child reports the peak RSS of its own address space (VmHWM) plus that of its children
HWM = (
    "import atexit, resource, sys\n"
    "def _hwm():\n"
    "    own = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1]\n"
    "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    open(sys.argv[1], 'w').write(f'{own} {kids}')\n"
    "atexit.register(_hwm)\n"
)


def generate(root: Path) -> int:
    """A Llama-7B-shaped slice: one shard per layer, BF16, written tensor by tensor."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(INTER * HIDDEN) * 0.02).astype(np.float32)
    bits = (pool.view(np.uint32) >> 16).astype(np.uint16)
    weight_map, total = {}, 0
    shapes = {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (HIDDEN, HIDDEN),
        "self_attn.v_proj": (HIDDEN, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (INTER, HIDDEN),
        "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER),
    }
    for layer in range(LAYERS):
        shard = f"model-{layer + 1:05d}-of-{LAYERS:05d}.safetensors"
        specs = [OutSpec(f"model.layers.{layer}.{k}.weight", "BF16", s) for k, s in shapes.items()]
        specs.append(OutSpec(f"model.layers.{layer}.input_layernorm.weight", "BF16", (HIDDEN,)))
        if layer == 0:
            specs.append(OutSpec("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)))
        with SafetensorsWriter(root / shard, specs, {"format": "pt"}) as out:
            for i, spec in enumerate(specs):
                n = int(np.prod(spec.shape))
                out.write(spec.name, np.roll(bits, 7919 * (i + layer))[:n])
                weight_map[spec.name] = shard
                total += spec.nbytes
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (root / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": HIDDEN,
                "intermediate_size": INTER,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "vocab_size": VOCAB,
                "torch_dtype": "bfloat16",
            }
        )
    )
    return total


def warm(root: Path) -> None:
    for p in sorted(root.glob("*.safetensors")):
        with open(p, "rb") as f:
            while f.read(1 << 26):
                pass


def timed(argv: list[str], label: str, tmp: Path) -> dict[str, float]:
    report = tmp / "hwm"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*argv[:2], HWM + argv[2], str(report), *argv[3:]],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    own, kids = (int(v) for v in report.read_text().split())
    return {"seconds": seconds, "peak_rss_mb": own / 1024, "children_peak_rss_mb": kids / 1024}


def write_ceiling(
    tmp: Path, nbytes: int, drop_behind: bool, idle: float, repeats: int = 3
) -> float:
    """Seconds to write ``nbytes`` into a fresh file in ``tmp`` in 16 MiB pieces (best of
    ``repeats``): plain ``pwrite`` into newly allocated page-cache pages, or the way the writer
    does it (drop-behind: each piece sent to disk, dropped from the cache 64 MiB later). Every
    converter that writes its output pays at least that, whatever it computes."""
    data = memoryview(np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8))
    best = float("inf")
    for _ in range(repeats):
        path = tmp / "ceiling.bin"
        os.sync()
        time.sleep(idle)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        drop = DropBehind(fd) if drop_behind else None
        t0 = time.perf_counter()
        for offset in range(0, nbytes, len(data)):
            n = os.pwrite(fd, data[: min(len(data), nbytes - offset)], offset)
            if drop is not None:
                drop.written(offset, n)
        if drop is not None:
            drop.finish()
        best = min(best, time.perf_counter() - t0)
        os.close(fd)
        path.unlink()
    return best


OURS = "from ue8m0.cli.main import main\nmain(sys.argv[2:])\n"
LLMC = (
    "from llmcompressor import model_free_ptq\n"
    "model_free_ptq(sys.argv[2], sys.argv[3], scheme='FP8_BLOCK', device='cpu',\n"
    "               ignore=['lm_head', 're:.*embed_tokens'], max_workers=int(sys.argv[4]))\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument("--llmc-python", default=None, help="a python that imports llmcompressor")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="best of N per configuration")
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="seconds to wait after each sync before a timed run (a VM may hand freed pages "
        "back to its host meanwhile, making fresh page-cache pages slow)",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ue8m0-bench-", dir=args.dir))
    try:
        src = base / "src"
        size = generate(src)
        print(f"checkpoint: {size / 1e9:.2f} GB BF16, {LAYERS} shards", flush=True)
        rows = []
        for label, drop_behind in (("plain pwrite", False), ("drop-behind, as the writer", True)):
            floor = write_ceiling(base, size // 2, drop_behind, args.idle)
            row = {"seconds": floor, "gb_per_s": size / 1e9 / floor}
            rows.append((f"write the output bytes, {label} (ceiling)", row))
            print(
                f"ceiling, {label}: writing {size / 2e9:.2f} GB takes {floor:.2f} s "
                f"= {size / 1e9 / floor:.2f} GB/s of input",
                flush=True,
            )
        configs = [
            (
                f"ue8m0 quantize --workers {w}",
                [
                    sys.executable,
                    "-c",
                    OURS,
                    "quantize",
                    str(src),
                    "DST",
                    "-q",
                    "--workers",
                    str(w),
                ],
            )
            for w in args.workers
        ]
        if args.llmc_python:
            configs += [
                (
                    f"llm-compressor model_free_ptq FP8_BLOCK, max_workers={w}",
                    [args.llmc_python, "-c", LLMC, str(src), "DST", str(w)],
                )
                for w in args.workers
            ]
        for label, argv in configs:
            best = None
            for _ in range(args.repeats):
                dst = base / "dst"
                shutil.rmtree(dst, ignore_errors=True)
                os.sync()  # the previous run's output is on disk: no writeback competes
                warm(src)
                time.sleep(args.idle)
                r = timed([a if a != "DST" else str(dst) for a in argv], label, base)
                best = r if best is None or r["seconds"] < best["seconds"] else best
            assert best is not None
            best["gb_per_s"] = size / 1e9 / best["seconds"]
            rows.append((label, best))
            print(
                f"{label}: {best['seconds']:.2f} s, {best['gb_per_s']:.2f} GB/s, peak RSS "
                f"{best['peak_rss_mb']:.0f} MB (workers {best['children_peak_rss_mb']:.0f} MB)",
                flush=True,
            )
        if not args.llmc_python:
            print("llm-compressor: skipped (no --llmc-python given)")
        print(
            json.dumps(
                {"bytes": size, "cpus": os.cpu_count(), "rows": {k: v for k, v in rows}}, indent=2
            )
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
