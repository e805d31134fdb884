"""Run a planned conversion: resume from the manifest, fan shards out to worker processes,
report progress, then write the index, the config and the copied files.

The destination only looks complete (``model.safetensors.index.json`` present) once every shard
is written; the index is written last, after the copied files and the config.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ue8m0 import kernels
from ue8m0.checkpoint.convert import convert_shard
from ue8m0.checkpoint.dstlock import acquire
from ue8m0.checkpoint.manifest import Manifest, source_fingerprint
from ue8m0.checkpoint.modelcard import CARD_NAME, write_card
from ue8m0.checkpoint.options import Options
from ue8m0.checkpoint.plan import Plan, ShardPlan
from ue8m0.checkpoint.preflight import check_plan
from ue8m0.checkpoint.procpool import WorkerPool, worker_queue
from ue8m0.checkpoint.progress import Progress, peak_rss_bytes
from ue8m0.checkpoint.safetensors import DTYPES
from ue8m0.checkpoint.source import INDEX_NAME, Checkpoint, check_destination
from ue8m0.checkpoint.steps.warmup import WARM_UPS
from ue8m0.checkpoint.writer import TMP_SUFFIX, copy_atomic, write_json_atomic

#: test-only hook: stop (sleep) after this many shards are recorded, to be killed mid-run
STOP_AFTER_ENV = "UE8M0_TEST_STOP_AFTER_SHARDS"


@dataclass
class RunResult:
    plan: Plan
    written: list[str]
    skipped: list[str]
    seconds: float
    worker_peak: int = 0
    worker_start: str | None = None  # "fork" / "spawn"; None: converted in this process
    executor: dict[str, Any] | None = None  # a Ray run's: executor, nodes, tasks, retries

    def summary(self) -> dict[str, Any]:
        converted = sum(s.in_bytes for s in self.plan.shards if s.name in self.written)
        peak = max(peak_rss_bytes(), self.worker_peak)
        return {
            **self.plan.summary(),
            "shards_written": len(self.written),
            "shards_resumed": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "bytes_converted": converted,
            "input_gb_per_s": round(converted / 1e9 / self.seconds, 3) if self.seconds else 0,
            "peak_rss_mb": round(peak / 2**20, 1),
            "worker_start": self.worker_start,
            **(self.executor or {"executor": "local"}),
        }


def run_plan(
    ckpt: Checkpoint,
    plan: Plan,
    dst: Path,
    workers: int = 1,
    progress: Progress | None = None,
    ray_address: str | None = None,
) -> RunResult:
    """Execute ``plan`` from ``ckpt`` into ``dst`` (resuming when ``dst`` has a manifest); with
    ``ray_address``, as tasks on that Ray cluster (:mod:`ue8m0.checkpoint.ray_exec`)."""
    progress = progress or Progress()
    check_destination(ckpt.root, dst)
    check_plan(ckpt, plan)  # every output name once, no reserved shard name
    dst.mkdir(parents=True, exist_ok=True)
    with acquire(dst, plan.kind):  # one run per DST: it may clean every temporary file
        return _run_locked(ckpt, plan, dst, workers, progress, ray_address)


def _run_locked(
    ckpt: Checkpoint,
    plan: Plan,
    dst: Path,
    workers: int,
    progress: Progress,
    ray_address: str | None,
) -> RunResult:
    _clean_temps(dst)
    manifest = Manifest.open(dst, plan.params, source_fingerprint(ckpt))
    t0 = time.perf_counter()
    todo = [s for s in plan.shards if not manifest.is_done(s, dst, ckpt.root)]
    skipped = [s.name for s in plan.shards if s not in todo]
    pooled = ray_address is None and workers > 1 and len(todo) > 1
    pool = _Pool.start_for(ckpt, plan, todo, workers) if pooled else None
    progress.start(sum(s.in_bytes for s in todo), len(todo))
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)

    def record(shard: ShardPlan, size: int, sha: str) -> None:
        manifest.record(shard.name, size, sha)
        progress.shard_done(shard.name)
        if stop_after and len(manifest.shards) - len(skipped) >= stop_after:
            time.sleep(3600)  # pragma: no cover - killed by the resume test

    worker_peak = 0
    on_ray: dict[str, Any] | None = None
    try:
        if ray_address is not None:
            from ue8m0.checkpoint.ray_exec import run_on_ray

            stats = run_on_ray(ray_address, ckpt, plan, dst, todo, progress, record)
            worker_peak, on_ray = stats.worker_peak, stats.summary()
        elif pool is None:
            for shard in todo:
                progress.shard_start(shard.name, shard.in_bytes)
                tick: Callable[[int], None] = partial(progress.advance, shard.name)
                size, sha = convert_shard(
                    ckpt.root,
                    dst,
                    shard,
                    plan.options,
                    tick,
                    threads=None,  # one process: every core (or UE8M0_NUM_THREADS)
                )
                record(shard, size, sha)
        else:
            worker_peak = pool.run(ckpt, plan, dst, todo, progress, record)
        _finalize(ckpt, plan, dst)
        manifest.finish()
        _clean_temps(dst)  # a killed worker's partial file (this run holds DST's lock)
    except BaseException:
        if pool is not None:
            pool.kill()
        _clean_temps(dst)
        raise
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    method = pool.method if pool is not None else None
    written = [s.name for s in todo]
    return RunResult(plan, written, skipped, seconds, worker_peak, method, on_ray)


def _clean_temps(dst: Path) -> None:
    for tmp in dst.rglob(f"*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def _worker(
    root: str, dst: str, shard: ShardPlan, options: Options, threads: int
) -> tuple[int, int, str]:
    """Convert one shard in a worker; ``(peak RSS, size, crc32)``. Errors travel back pickled
    (:class:`CheckpointError` pickles with its fields)."""

    def tick(n: int) -> None:
        worker_queue().put((shard.name, n))

    size, sha = convert_shard(Path(root), Path(dst), shard, options, tick, threads)
    return peak_rss_bytes(), size, sha


@dataclass
class _Pool(WorkerPool):
    """Worker processes over shards (:class:`.procpool.WorkerPool`)."""

    @classmethod
    def start_for(cls, ckpt: Checkpoint, plan: Plan, todo: list[ShardPlan], workers: int) -> _Pool:
        _warm_up(ckpt, todo, plan.options)
        return cls.start(min(workers, len(todo)), ckpt.root, "a worker process")

    def run(
        self,
        ckpt: Checkpoint,
        plan: Plan,
        dst: Path,
        todo: list[ShardPlan],
        progress: Progress,
        record: Any,
    ) -> int:
        """Run ``todo`` on the workers; returns the largest worker peak RSS (bytes)."""
        pending: dict[Future[Any], ShardPlan] = {}
        sizes = {s.name: s.in_bytes for s in todo}
        started: set[str] = set()
        peak = 0
        for shard in todo:
            args = (str(ckpt.root), str(dst), shard, plan.options, self.threads)
            pending[self.executor.submit(_worker, *args)] = shard
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(self.queue, progress, sizes, started)
            for fut in done:
                shard = pending.pop(fut)
                try:
                    worker_peak, size, sha = fut.result()
                except BrokenProcessPool:
                    raise self.died(
                        dst,
                        "a worker process",
                        f"while converting {shard.name}",
                        "; rerun the same command to resume",
                    ) from None
                peak = max(peak, worker_peak)
                record(shard, size, sha)
        _drain(self.queue, progress, sizes, started)
        self.executor.shutdown()
        return peak


def _warm_up(ckpt: Checkpoint, todo: list[ShardPlan], options: Options) -> None:
    """Compile (or load) the kernels the workers will call, without running them.

    Forked workers inherit them ready; spawned ones find them in the disk cache (workers
    compiling the same numba cache at once have failed: "unexpected cycle in lookup"; the
    compile lock of :func:`ue8m0.kernels.set_compile_lock` covers the rest). Inputs are
    read-only like the reader's ``map_rows`` slabs, blocks are the plan's: the kernels' signatures.
    """
    seen = set()
    with kernels.compile_only():
        for shard in todo:
            for task in shard.tasks:
                if task.action not in WARM_UPS:
                    continue
                info = ckpt.tensors[task.name]
                key = (info.dtype, task.fmt, task.block)
                if key in seen:
                    continue
                seen.add(key)
                WARM_UPS[task.action](DTYPES[info.dtype], task, options)


def _drain(q: Any, progress: Progress, sizes: dict[str, int], started: set[str]) -> None:
    """Forward the workers' byte counts to the progress bars (a shard's bar starts on its first
    bytes, so only the shards in flight have one)."""
    while True:
        try:
            shard, n = q.get_nowait()
        except queue.Empty:
            return
        if shard not in started:
            started.add(shard)
            progress.shard_start(shard, sizes[shard])
        progress.advance(shard, n)


def _finalize(ckpt: Checkpoint, plan: Plan, dst: Path) -> None:
    """The copied files, config.json, the model card and .gitignore, then (last) the index."""
    for rel in ckpt.extra_files:
        if (rel == "config.json" and plan.config is not None) or rel == CARD_NAME:
            continue
        copy_atomic(ckpt.root / rel, dst / rel)
    if plan.config is not None:
        write_json_atomic(dst / "config.json", plan.config)
    write_card(ckpt, plan, dst)
    weight_map = dict(sorted(plan.weight_map().items()))
    write_json_atomic(
        dst / INDEX_NAME, {"metadata": {"total_size": plan.out_bytes}, "weight_map": weight_map}
    )
