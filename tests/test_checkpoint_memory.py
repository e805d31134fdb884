"""Peak RSS of ``ue8m0 quantize`` stays under 2 x the largest tensor + 300 MB on a checkpoint
several times larger than that bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ue8m0.checkpoint.writer import OutSpec, SafetensorsWriter

ROWS, COLS = 2048, 2048  # 8 MiB per BF16 tensor
TENSORS_PER_SHARD, SHARDS = 32, 4  # 1 GiB in all


def _big_checkpoint(root: Path) -> int:
    """Written with the streaming writer, one tensor at a time (the test stays small too)."""
    root.mkdir()
    base = (np.random.default_rng(0).standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)
    bf16 = (base.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16 bits
    total = 0
    for s in range(SHARDS):
        specs = [
            OutSpec(f"model.layers.{s}.mlp.experts.{i}.up_proj.weight", "BF16", (ROWS, COLS))
            for i in range(TENSORS_PER_SHARD)
        ]
        with SafetensorsWriter(root / f"model-{s:05d}.safetensors", specs, {"format": "pt"}) as w:
            for i, spec in enumerate(specs):
                w.write(spec.name, np.roll(bf16, i, axis=1))
                total += spec.nbytes
    return total


@pytest.mark.slow
def test_peak_rss_under_bound(tmp_path: Path) -> None:
    total = _big_checkpoint(tmp_path / "src")
    largest = ROWS * COLS * 2
    bound = 2 * largest + 300 * 2**20
    assert total > 3 * bound
    # VmHWM of the child's own address space: ru_maxrss would carry the peak of the forked
    # copy of this (possibly large) test process across exec
    report = tmp_path / "vmhwm"
    code = (
        "import atexit, sys\n"
        "from ue8m0.cli.main import main\n"
        "def hwm():\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        f"    open({str(report)!r}, 'w').write(line.split()[1])\n"
        "atexit.register(hwm)\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "quantize", str(tmp_path / "src"), str(tmp_path / "q"), "-q"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    peak = int(report.read_text()) * 1024  # kB
    print(f"peak RSS {peak / 2**20:.0f} MiB on {total / 2**30:.2f} GiB; bound {bound / 2**20:.0f}")
    assert peak < bound
    assert len(list((tmp_path / "q").glob("*.safetensors"))) == SHARDS
