"""Run a plan's shards as tasks on an existing Ray cluster (``--ray ADDRESS``).

The driver plans, submits one Ray task per output shard (each calls
:func:`ue8m0.checkpoint.convert.convert_shard` on whichever node runs it, writing straight into
DST) and records every finished shard in the manifest itself; the runner then writes the copied
files, the config and the index, last. So DST must be storage every node mounts at the same
path: before any task, a probe task on every node with CPUs checks that it sees a file the
driver wrote there (and the source's shard, and the same ue8m0 sources), and the run is refused
otherwise.

Faults: a task whose worker process or node dies is retried by Ray (``max_retries``); its
partial output is a temporary file the retry truncates, never renamed into place. A driver that
dies takes its tasks along (Ray ends a job's workers); the rerun resumes from the manifest.

Each task attempt leaves an empty marker in DST (named like the writer's temporary files, so
the runner's clean-up and the manifest's empty-directory check ignore them); the markers count
the retries and are removed at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ue8m0.checkpoint.plan import Plan, ShardPlan
from ue8m0.checkpoint.writer import TMP_SUFFIX
from ue8m0.errors import CheckpointError, Ue8m0Error
from ue8m0.extras import require

if TYPE_CHECKING:
    from ue8m0.checkpoint.progress import Progress
    from ue8m0.checkpoint.source import Checkpoint

#: Ray retries a task this many times when its worker process or node dies
MAX_RETRIES = 3
#: seconds a TCP connection to the cluster's address may take (ray.init itself retries minutes)
CONNECT_TIMEOUT_S = 10.0
#: seconds the probe tasks may take to start on every node
PROBE_TIMEOUT_S = 120.0
#: test-only hook: each task sleeps this many seconds after its first bytes (to be killed)
TASK_DELAY_ENV = "UE8M0_TEST_RAY_TASK_DELAY"
#: the name a worker process shows (``ray::<name>``) while it converts a shard
TASK_NAME = "ue8m0_convert_shard"
_MARK = ".ue8m0-ray-"


@dataclass(frozen=True)
class RayStats:
    """What a Ray run reports: the nodes that ran tasks, the tasks, the retries Ray made."""

    nodes: int
    tasks: int
    retries: int
    worker_peak: int = 0  # bytes: the largest peak RSS of a worker process

    def summary(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "nodes": self.nodes,
            "tasks": self.tasks,
            "retries": self.retries,
        }


def package_digest() -> str:
    """SHA-256 over the names and bytes of ue8m0's ``*.py`` files: the driver and every node
    must run the same code for the bytes to be those of a local run."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def connect(address: str) -> tuple[Any, bool]:
    """``(ray, connected)``: the ``ray`` module connected to the cluster at ``address``
    (``auto``: the one ``RAY_ADDRESS`` or ``ray start`` on this machine points at), and whether
    this call connected (False inside a Ray driver that already is). Never starts a cluster."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return ray, False
    _check_reachable(address)
    try:
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            log_to_driver=False,
            include_dashboard=False,
        )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"--ray {address}", f"cannot connect to the Ray cluster ({reason})"
        ) from None
    # Ray prints the cluster's error messages ("a worker died ...") on stdout, where --json
    # writes; a lost task is retried and counted (RayStats.retries), or raised as one line.
    # The switch is the one ray.util.rpdb uses.
    ray_worker = getattr(getattr(ray, "_private", None), "worker", None)
    if hasattr(ray_worker, "_worker_logs_enabled"):
        ray_worker._worker_logs_enabled = False  # type: ignore[union-attr]
    return ray, True


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` (or ``RAY_ADDRESS`` for ``auto``) nothing listens on."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # ``auto`` without RAY_ADDRESS, or a form ray.init explains itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise CheckpointError(
            f"--ray {address}",
            f"cannot connect to the Ray cluster at {host}:{port} ({exc.strerror or exc})",
        ) from None


def run_on_ray(
    address: str,
    ckpt: Checkpoint,
    plan: Plan,
    dst: Path,
    todo: list[ShardPlan],
    progress: Progress,
    record: Callable[[ShardPlan, int, str], None],
    task_cpus: int = 1,
) -> RayStats:
    """Convert ``todo`` on the cluster at ``address``; ``record(shard, size, crc32)`` is called
    in this process as each shard lands. Each task reserves ``task_cpus`` CPUs and runs that
    many kernel threads."""
    if not todo:
        return RayStats(0, 0, 0)
    ray, owned = connect(address)
    run_id = uuid.uuid4().hex[:12]
    try:
        nodes = _cpu_nodes(ray, address)
        _probe(ray, nodes, ckpt, dst, todo[0], run_id)
        delay = float(os.environ.get(TASK_DELAY_ENV, "0") or 0)
        args = (str(ckpt.root), str(dst), plan.options, task_cpus, run_id, delay)
        task = ray.remote(convert_task).options(
            name=TASK_NAME, num_cpus=task_cpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        used, peak = _run_tasks(
            ray, {task.remote(s, *args): s for s in todo}, dst, progress, record
        )
        attempts = len(list(dst.glob(f"{_MARK}attempt-{run_id}-*{TMP_SUFFIX}")))
        return RayStats(len(used), len(todo), max(0, attempts - len(todo)), peak)
    finally:
        for marker in dst.glob(f"{_MARK}*{run_id}*{TMP_SUFFIX}"):
            marker.unlink(missing_ok=True)
        if owned:
            ray.shutdown()


def _cpu_nodes(ray: Any, address: str) -> dict[str, str]:
    """node id -> address of every live node with CPUs (the ones tasks can run on)."""
    nodes = {
        n["NodeID"]: n["NodeManagerAddress"]
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
    }
    if not nodes:
        raise CheckpointError(f"--ray {address}", "the cluster has no live node with CPUs")
    return nodes


def _probe(
    ray: Any, nodes: dict[str, str], ckpt: Checkpoint, dst: Path, shard: ShardPlan, run_id: str
) -> None:
    """One task per node: it must see a file this process wrote in DST (and its own file must
    be seen here), the source shard ``shard`` with its size, and the same ue8m0 sources."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = dst / f"{_MARK}probe-{run_id}{TMP_SUFFIX}"
    probe.write_text(token, encoding="ascii")
    src = ckpt.root / shard.name
    src_size = src.stat().st_size
    task = ray.remote(probe_node)
    refs = {
        task.options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(str(probe), token, str(src), src_size): node
        for node in nodes
    }
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    if late:
        node = refs[late[0]]
        raise CheckpointError(
            f"--ray (node {nodes[node]})",
            f"the probe task did not run within {PROBE_TIMEOUT_S:.0f} s",
        )
    digest = package_digest()
    for ref in ready:
        node = refs[ref]
        try:
            seen = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise CheckpointError(
                f"--ray (node {nodes[node]})", f"the probe task failed: {_first_line(exc)}"
            ) from None
        where = f"{nodes[node]} ({node[:8]})"
        if not seen["dst"] or not Path(seen["written"]).is_file():
            raise CheckpointError(
                dst,
                f"node {where} does not share this directory with the driver (a probe file "
                "is not seen on both sides): --ray needs DST on storage every node mounts at "
                "the same path",
            )
        if not seen["src"]:
            raise CheckpointError(
                src,
                f"node {where} cannot read this source shard (or sees another size): --ray "
                "needs SRC on storage every node mounts at the same path",
            )
        if seen["digest"] != digest:
            raise CheckpointError(
                f"--ray (node {where})",
                "runs other ue8m0 sources than the driver: install the same ue8m0 on every "
                "node (the output must not depend on where a shard ran)",
            )


def probe_node(probe: str, token: str, src: str, src_size: int) -> dict[str, Any]:
    """Run on one node by :func:`_probe`: what it sees of DST and SRC, and its ue8m0 sources."""
    path = Path(probe)
    try:
        dst_ok = path.read_text(encoding="ascii") == token
    except OSError:
        dst_ok = False
    written = path.with_name(f"{path.name[: -len(TMP_SUFFIX)]}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        written.write_text(token, encoding="ascii")
    except OSError:
        dst_ok = False
    try:
        src_ok = os.stat(src).st_size == src_size
    except OSError:
        src_ok = False
    return {"dst": dst_ok, "written": str(written), "src": src_ok, "digest": package_digest()}


def _run_tasks(
    ray: Any,
    pending: dict[Any, ShardPlan],
    dst: Path,
    progress: Progress,
    record: Callable[[ShardPlan, int, str], None],
) -> tuple[set[str], int]:
    """Wait for the submitted tasks; returns the nodes that ran them and the largest worker peak
    RSS. On any error the rest is cancelled.

    Shards are recorded in plan order (a shard that lands early waits for those before it), so
    the manifest lists them as a local run's does, byte for byte."""
    order = list(pending.values())
    landed: dict[str, tuple[int, str]] = {}
    used: set[str] = set()
    peak = 0
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                shard = pending.pop(ref)
                size, crc, node, rss = _result(ray, ref, shard, dst)
                used.add(node)
                peak = max(peak, rss)
                progress.advance(shard.name, shard.in_bytes)
                landed[shard.name] = (size, crc)
            while order and order[0].name in landed:
                shard = order.pop(0)
                record(shard, *landed.pop(shard.name))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return used, peak


def _result(ray: Any, ref: Any, shard: ShardPlan, dst: Path) -> tuple[int, str, str, int]:
    """A finished task's ``(size, crc32, node id, peak RSS)``, or its one-line error."""
    try:
        out: tuple[int, str, str, int] = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Ue8m0Error):
            raise cause from None
        raise CheckpointError(
            dst / shard.name, f"the Ray task failed: {_first_line(cause or exc)}"
        ) from None
    except ray.exceptions.RayError as exc:
        raise CheckpointError(
            dst / shard.name,
            f"Ray lost the task {1 + MAX_RETRIES} times ({type(exc).__name__}: a worker or "
            "node died); rerun the same command to resume",
        ) from None
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def convert_task(
    shard: ShardPlan,
    src_root: str,
    dst_root: str,
    options: Any,
    threads: int,
    run_id: str,
    delay: float,
) -> tuple[int, str, str, int]:
    """One Ray task: convert ``shard`` on this node; ``(size, crc32, node id, peak RSS)``."""
    import ray

    from ue8m0 import kernels
    from ue8m0.checkpoint.convert import convert_shard
    from ue8m0.checkpoint.progress import peak_rss_bytes

    attempt = Path(dst_root) / f"{_MARK}attempt-{run_id}-{uuid.uuid4().hex}{TMP_SUFFIX}"
    attempt.touch()
    kernels.set_compile_lock(_node_compile_lock())
    slowed = [delay > 0]

    def tick(n: int) -> None:
        if slowed[0]:  # the test hook: hold the partial output for a while
            slowed[0] = False
            time.sleep(delay)

    size, crc = convert_shard(Path(src_root), Path(dst_root), shard, options, tick, threads)
    return size, crc, ray.get_runtime_context().get_node_id(), peak_rss_bytes()


class _FileLock:
    """An exclusive ``flock`` on a file: serialises numba compiles between the worker processes
    of one node (they share its kernel disk cache; compiling into it at once corrupts it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _node_compile_lock() -> _FileLock:
    return _FileLock(Path(tempfile.gettempdir()) / f"ue8m0-compile-{os.getuid()}.lock")
