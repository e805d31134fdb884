"""Worker processes: forked from a fresh CLI process (kernels compiled once in the parent, never
run there), spawned otherwise; either way the same bytes as one process. The parent's warm-up
compiles exactly the kernel signatures the conversion calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ue8m0.kernels as kernels
from ckpt_fixtures import BF16, run_cli, visible_files, write_checkpoint
from ue8m0.checkpoint import procpool, runner
from ue8m0.checkpoint.options import Fp8Options, QuantizeOptions
from ue8m0.checkpoint.plan_dequantize import plan_dequantize
from ue8m0.checkpoint.plan_fp8 import plan_fp8
from ue8m0.checkpoint.plan_quantize import plan_quantize
from ue8m0.checkpoint.runner import STOP_AFTER_ENV
from ue8m0.checkpoint.source import MANIFEST_NAME, open_checkpoint
from ue8m0.errors import CheckpointError


def _shards(root: Path) -> Path:
    rng = np.random.default_rng(5)
    shards = {
        f"model-0000{i}-of-00003.safetensors": {
            f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((256, 384)) * 0.02).astype(
                BF16 if i != 3 else np.float32
            ),
            f"model.layers.{i}.mlp.experts.down_proj": (
                rng.standard_normal((2, 128, 256)) * 0.02
            ).astype(BF16),
            f"model.layers.{i}.input_layernorm.weight": np.ones(384, BF16),
        }
        for i in range(1, 4)
    }
    return write_checkpoint(root, shards)


def _fresh_cli(*args: object, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``ue8m0 ARGS --json`` in a fresh process (nothing loaded yet): its JSON summary."""
    done = subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_fresh_cli_forks_workers_that_match_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _shards(tmp_path / "src")
    forked = _fresh_cli("quantize", src, tmp_path / "w2", "--workers", "2")
    assert forked["worker_start"] == "fork" and forked["shards_written"] == 3
    assert run_cli(["quantize", src, tmp_path / "w1", "-q"], capsys)[0] == 0
    assert visible_files(tmp_path / "w1") == visible_files(tmp_path / "w2")

    deq = _fresh_cli("dequantize", tmp_path / "w2", tmp_path / "d2", "--workers", "2")
    assert deq["worker_start"] == "fork"
    assert run_cli(["dequantize", tmp_path / "w2", tmp_path / "d1", "-q"], capsys)[0] == 0
    assert visible_files(tmp_path / "d1") == visible_files(tmp_path / "d2")

    mx = _fresh_cli("relayout", tmp_path / "w2", tmp_path / "m2", "--to", "mxfp8", "--workers", "2")
    assert mx["worker_start"] == "fork"
    args = ["relayout", tmp_path / "w2", tmp_path / "m1", "--to", "mxfp8", "-q"]
    assert run_cli(args, capsys)[0] == 0
    assert visible_files(tmp_path / "m1") == visible_files(tmp_path / "m2")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_spawned_workers_match_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fallback where forking is unsafe: spawned workers, kernels from the disk cache."""
    src = _shards(tmp_path / "src")
    env = {procpool.START_METHOD_ENV: "spawn"}
    spawned = _fresh_cli("quantize", src, tmp_path / "w2", "--workers", "2", env=env)
    assert spawned["worker_start"] == "spawn"
    assert run_cli(["quantize", src, tmp_path / "w1", "-q"], capsys)[0] == 0
    assert visible_files(tmp_path / "w1") == visible_files(tmp_path / "w2")


def test_killed_run_takes_its_workers_along_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the parent of a --workers 2 run: the kernel kills its workers too (none keeps
    writing into DST), and rerunning resumes to the bytes of an uninterrupted run."""
    src = _shards(tmp_path / "src")
    dst = tmp_path / "killed"
    env = {**os.environ, STOP_AFTER_ENV: "1"}
    args = [sys.executable, "-m", "ue8m0.cli.main", "quantize", src, dst, "-q", "--workers", "2"]
    err = tmp_path / "stderr.txt"
    with err.open("wb") as sink:  # not a pipe: a surviving worker would hold it open
        proc = subprocess.Popen(list(map(str, args)), env=env, stderr=sink)
    manifest = dst / MANIFEST_NAME
    deadline = time.monotonic() + 120
    while not (manifest.exists() and json.loads(manifest.read_text())["shards"]):
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the pool's processes (and the queue's resource tracker, if any)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # pragma: no cover - only when the test fails
        os.kill(w, signal.SIGKILL)
    assert not survivors
    assert not (dst / "model.safetensors.index.json").exists()

    assert _fresh_cli("quantize", src, dst, "--workers", "2")["shards_resumed"] >= 1
    assert run_cli(["quantize", src, tmp_path / "whole", "-q"], capsys)[0] == 0
    assert visible_files(dst) == visible_files(tmp_path / "whole")


def test_one_process_run_reports_no_worker_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _shards(tmp_path / "src")
    code, out, _ = run_cli(["quantize", src, tmp_path / "q", "--json"], capsys)
    assert code == 0 and json.loads(out)["worker_start"] is None


def test_start_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(procpool.START_METHOD_ENV, raising=False)
    monkeypatch.setattr(procpool.sys, "platform", "linux")
    monkeypatch.setattr(kernels, "fork_safe", lambda: True)
    live = threading.active_count
    monkeypatch.setattr(procpool.threading, "active_count", lambda: 1)  # other tests' threads
    assert procpool.start_method() == "fork"
    monkeypatch.setattr(kernels, "fork_safe", lambda: False)  # GNU OpenMP loaded
    assert procpool.start_method() == "spawn"
    monkeypatch.setattr(kernels, "fork_safe", lambda: True)
    monkeypatch.setattr(procpool.sys, "platform", "darwin")
    assert procpool.start_method() == "spawn"
    monkeypatch.setattr(procpool.sys, "platform", "linux")
    monkeypatch.setattr(procpool.threading, "active_count", live)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:  # another thread could hold a lock the child would inherit held
        assert procpool.start_method() == "spawn"
    finally:
        stop.set()
        other.join()
    for forced in ("spawn", "fork"):
        monkeypatch.setenv(procpool.START_METHOD_ENV, forced)
        assert procpool.start_method() == forced


def test_fork_safe_follows_the_threading_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from ue8m0.kernels import _threads

    def loaded(name: str) -> Any:
        return lambda: name

    def not_loaded() -> str:
        raise ValueError("Threading layer is not initialized.")

    monkeypatch.setattr(_threads.numba, "threading_layer", loaded("omp"))
    assert not _threads.fork_safe()
    monkeypatch.setattr(_threads.numba, "threading_layer", loaded("workqueue"))
    assert _threads.fork_safe()
    monkeypatch.setattr(_threads.numba, "threading_layer", not_loaded)
    monkeypatch.setattr(_threads.numba.config, "THREADING_LAYER", "default")
    assert not _threads.fork_safe()
    _threads.prefer_fork_safe_layer()
    assert _threads.numba.config.THREADING_LAYER == "workqueue" and _threads.fork_safe()
    monkeypatch.setattr(_threads.numba.config, "THREADING_LAYER", "omp")  # the user's choice
    _threads.prefer_fork_safe_layer()
    assert _threads.numba.config.THREADING_LAYER == "omp"


def _record_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    real = kernels._launch

    def launch(kernel: Any, *args: Any) -> Any:
        calls.append((kernel.__name__, tuple(kernels.numba.typeof(a) for a in args)))
        return real(kernel, *args)

    monkeypatch.setattr(kernels, "_launch", launch)
    return calls


def test_warm_up_compiles_what_the_run_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kernel signature a conversion calls was compiled by the parent's warm-up (then
    forked workers never compile), for each kind of run."""
    src = _shards(tmp_path / "src")
    calls = _record_launches(monkeypatch)
    ckpt = open_checkpoint(src)
    plans = {"quantize": lambda c: plan_quantize(c, QuantizeOptions().validated())}
    plans["dequantize"] = plan_dequantize
    plans["requantize"] = lambda c: plan_fp8(c, "requantize", Fp8Options().validated())
    plans["relayout"] = lambda c: plan_fp8(c, "relayout", Fp8Options(layout="mxfp8").validated())
    fp32 = tmp_path / "fp32"
    opts = QuantizeOptions(scale_rule="fp32").validated()
    runner.run_plan(ckpt, plan_quantize(ckpt, opts), fp32)
    for kind, make in plans.items():
        source = open_checkpoint(src if kind == "quantize" else fp32)
        plan = make(source)
        calls.clear()
        runner._warm_up(source, plan.shards, plan.options)
        warm = set(calls)
        assert warm, kind
        calls.clear()
        runner.run_plan(source, plan, tmp_path / kind)
        assert set(calls) <= warm, (kind, set(calls) - warm)


def test_compile_only_runs_no_kernel() -> None:
    x = (np.arange(256 * 256, dtype=np.float32).reshape(256, 256) / 1e4).astype(BF16)
    out = np.full(x.shape, 0xAB, np.uint8)
    with kernels.compile_only():
        kernels.quantize(x, (128, 128), *_E4M3_RCEIL, out=out)
    assert (out == 0xAB).all()
    codes, _, _ = kernels.quantize(x, (128, 128), *_E4M3_RCEIL, out=out)
    assert not (codes == 0xAB).all()


def test_new_signatures_compile_under_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class Lock:
        def __enter__(self) -> None:
            events.append("lock")

        def __exit__(self, *exc: object) -> None:
            events.append("unlock")

    class Kernel:
        def __init__(self) -> None:
            self.overloads: dict[Any, Any] = {}

        def compile(self, sig: Any) -> None:
            events.append("compile")
            self.overloads[sig] = None

        def __call__(self, *args: Any) -> int:
            events.append("run")
            return 0

    monkeypatch.setattr(kernels._State, "lock", Lock())
    kernel = Kernel()
    kernels._launch(kernel, np.zeros(3), 1)
    kernels._launch(kernel, np.zeros(4), 2)  # same types: compiled already
    assert events == ["lock", "compile", "unlock", "run", "run"]


def _e4m3_rceil() -> tuple[Any, ...]:
    from ue8m0.formats import ELEMENT_FORMATS
    from ue8m0.policies import NonFinite, ScaleRule

    return (ELEMENT_FORMATS[0], ScaleRule.RCEIL, 1e-4, NonFinite.RAISE)


_E4M3_RCEIL = _e4m3_rceil()


def _die(*args: Any, **kwargs: Any) -> Any:
    os._exit(3)  # a worker killed by the system (the OOM killer, a crash)


def test_dead_worker_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _shards(tmp_path / "src")
    ckpt = open_checkpoint(src)
    plan = plan_quantize(ckpt, QuantizeOptions().validated())
    monkeypatch.setenv(procpool.START_METHOD_ENV, "fork")  # the child inherits the patch below
    monkeypatch.setattr(runner, "convert_shard", _die)
    with pytest.raises(CheckpointError, match="a worker process died while converting"):
        runner.run_plan(ckpt, plan, tmp_path / "q", workers=2)
    assert not (tmp_path / "q" / "model.safetensors.index.json").exists()
    assert not list((tmp_path / "q").glob("*.safetensors"))


def test_worker_dying_at_start_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _shards(tmp_path / "src")
    ckpt = open_checkpoint(src)
    plan = plan_quantize(ckpt, QuantizeOptions().validated())
    monkeypatch.setenv(procpool.START_METHOD_ENV, "fork")
    monkeypatch.setattr(procpool, "die_with_parent", _die)  # the worker initializer fails hard
    with pytest.raises(CheckpointError, match="a worker process died while starting"):
        runner.run_plan(ckpt, plan, tmp_path / "q", workers=2)
    assert not (tmp_path / "q" / "model.safetensors.index.json").exists()
