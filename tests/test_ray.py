"""``--ray ADDRESS``: conversions run as Ray tasks on a one-node cluster started on 127.0.0.1
give the bytes of a local run (every file: shards, manifest, index, config, stats), survive a
killed task worker and a killed driver, and resume local runs (and the reverse).

The cluster (module-scoped) listens on the loopback address only; its setup fails otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray  # noqa: F401  (the dev extra installs it: a broken install fails, not skips)

from ckpt_fixtures import BF16, run_cli, write_checkpoint
from ray_cluster import LOOPBACK_ENV, LoopbackCluster, alive, free_port, workers_running
from ue8m0.checkpoint import ray_exec
from ue8m0.checkpoint.runner import STOP_AFTER_ENV
from ue8m0.checkpoint.source import INDEX_NAME, MANIFEST_NAME
from ue8m0.checkpoint.writer import TMP_SUFFIX
from ue8m0.errors import CheckpointError

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    head = LoopbackCluster(tmp_path_factory.mktemp("ray"))
    head.start()
    try:
        head.check_loopback()
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four shards: bf16 and f32 linears, 3-D experts, norms (kept)."""
    rng = np.random.default_rng(17)
    shards = {
        f"model-0000{i}-of-00004.safetensors": {
            f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((256, 384)) * 0.02).astype(
                np.float32 if i == 4 else BF16
            ),
            f"model.layers.{i}.mlp.experts.down_proj": (
                rng.standard_normal((2, 128, 256)) * 0.02
            ).astype(BF16),
            f"model.layers.{i}.input_layernorm.weight": np.ones(384, BF16),
        }
        for i in range(1, 5)
    }
    return write_checkpoint(tmp_path_factory.mktemp("src"), shards)


def every_file(root: Path) -> dict[str, bytes]:
    """The bytes of every file under ``root``, hidden ones (manifest, stats) included."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **LOOPBACK_ENV, **(extra or {})}


def _start(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``ue8m0 ARGS`` in a fresh process (a Ray driver needs its own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ue8m0.cli.main", *map(str, args)],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _json_run(*args: object, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = _start(*args, "--json", env=env)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _local(capsys: pytest.CaptureFixture[str], *args: object) -> None:
    code, _, err = run_cli([*map(str, args), "-q"], capsys)
    assert code == 0, err


def test_quantize_on_ray_is_byte_identical_to_local(
    cluster: LoopbackCluster, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _json_run("quantize", src, tmp_path / "ray", "--ray", cluster.address)
    assert summary["executor"] == "ray"
    assert (summary["nodes"], summary["tasks"], summary["retries"]) == (1, 4, 0)
    assert summary["shards_written"] == 4
    _local(capsys, "quantize", src, tmp_path / "local")
    local = every_file(tmp_path / "local")
    assert {MANIFEST_NAME, INDEX_NAME, "config.json", "tokenizer.json"} <= set(local)
    assert sum(name.endswith(".safetensors") for name in local) == 4
    assert every_file(tmp_path / "ray") == local


def test_dequantize_requantize_relayout_on_ray_are_byte_identical(
    cluster: LoopbackCluster, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp8 = tmp_path / "fp8"
    _local(capsys, "quantize", src, fp8, "--scale-rule", "fp32")
    runs = {
        "dequantize": ["dequantize"],
        "requantize": ["requantize"],
        "relayout": ["relayout", "--to", "mxfp8"],
    }
    for name, (command, *opts) in runs.items():
        # `auto`: the cluster RAY_ADDRESS names
        env = {"RAY_ADDRESS": cluster.address}
        summary = _json_run(command, fp8, tmp_path / f"{name}-ray", *opts, "--ray", "auto", env=env)
        assert summary["executor"] == "ray" and summary["tasks"] == 4, name
        _local(capsys, command, fp8, tmp_path / f"{name}-local", *opts)
        local = every_file(tmp_path / f"{name}-local")
        assert every_file(tmp_path / f"{name}-ray") == local, name


def _wait_for(what: str, proc: subprocess.Popen[str], ready: Any) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def test_killed_task_worker_is_retried_and_the_bytes_are_the_same(
    cluster: LoopbackCluster, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the worker process (a child of the raylet) while it holds a partial shard: Ray
    reruns the task, the partial file never becomes a shard, the output is the local run's."""
    dst = tmp_path / "ray"
    delay = {ray_exec.TASK_DELAY_ENV: "4"}
    proc = _start("quantize", src, dst, "--ray", cluster.address, "--json", env=delay)

    def partial() -> list[Path]:
        return list(dst.glob(f".model-*{TMP_SUFFIX}")) if dst.is_dir() else []

    def writer() -> list[tuple[int, Path]]:
        """(pid, file) of a task worker that has a partial shard open."""
        return [
            (pid, temp)
            for temp in partial()
            for pid in workers_running(cluster, ray_exec.TASK_NAME)
            if temp in _open_files(pid)
        ]

    (victim, temp), *_ = _wait_for("a worker writing a shard", proc, writer)
    assert not (dst / temp.name[1 : -len(TMP_SUFFIX)]).exists()  # held in its temporary file
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["retries"] >= 1 and summary["tasks"] == 4
    _local(capsys, "quantize", src, tmp_path / "local")
    assert every_file(dst) == every_file(tmp_path / "local")


def _open_files(pid: int) -> set[Path]:
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                found.add(Path(os.readlink(fd)))
            except OSError:
                continue
    except OSError:  # exited meanwhile
        pass
    return found


def _killed_run(src: Path, dst: Path, executor: list[str], cluster: LoopbackCluster) -> None:
    """A quantize run SIGKILLed once it recorded a shard (the test hook then holds it)."""
    proc = _start("quantize", src, dst, "-q", *executor, env={STOP_AFTER_ENV: "1"})
    manifest = dst / MANIFEST_NAME

    def recorded() -> bool:
        return manifest.exists() and bool(json.loads(manifest.read_text())["shards"])

    _wait_for("a recorded shard", proc, recorded)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # Ray ends a dead driver's workers: none may still write into DST
    deadline = time.monotonic() + 60
    while workers_running(cluster, ray_exec.TASK_NAME) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers_running(cluster, ray_exec.TASK_NAME)
    assert not (dst / INDEX_NAME).exists()


@pytest.mark.parametrize(("first", "then"), [("ray", "ray"), ("local", "ray"), ("ray", "local")])
def test_killed_driver_resumes_to_the_same_bytes(
    cluster: LoopbackCluster,
    src: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first: str,
    then: str,
) -> None:
    """A run killed mid-way resumes from its manifest, with either executor."""
    executors = {"ray": ["--ray", cluster.address], "local": []}
    dst = tmp_path / "killed"
    _killed_run(src, dst, executors[first], cluster)
    summary = _json_run("quantize", src, dst, *executors[then])
    assert summary["shards_resumed"] >= 1
    assert summary["shards_resumed"] + summary["shards_written"] == 4
    if then == "ray":
        assert summary["executor"] == "ray" and summary["tasks"] == summary["shards_written"]
    _local(capsys, "quantize", src, tmp_path / "local")
    assert every_file(dst) == every_file(tmp_path / "local")


def test_every_ray_listener_is_on_loopback(cluster: LoopbackCluster) -> None:
    """After the runs (workers listen too), still nothing outside 127.0.0.1."""
    found = cluster.check_loopback()
    assert len(found) >= 3  # GCS, raylet, workers
    assert all(alive(pid) for pid in found.values())


def test_ray_not_installed_is_one_line_error_naming_the_extra(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = run_cli(["quantize", src, tmp_path / "q", "--ray", "auto"], capsys)
    assert code == 1  # a missing extra (ue8m0.extras.MissingExtraError)
    assert len(err.strip().splitlines()) == 1 and "pip install 'ue8m0[ray]'" in err
    assert not (tmp_path / "q").exists()  # refused before DST is created


def test_unreachable_cluster_is_one_line_error(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _start("quantize", src, tmp_path / "q", "--ray", f"127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "cannot connect to the Ray cluster" in err


class _Ref:
    def __init__(self, value: Any) -> None:
        self.value = value


class _FakeRay:
    """Stands in for ``ray`` in :func:`ray_exec._probe`: runs the probe task here, on each
    "node", with what ``node_view`` makes of its arguments."""

    class exceptions:  # mirrors ray.exceptions
        RayError = RuntimeError

    def __init__(self, node_view: Any) -> None:
        self.node_view = node_view

    def remote(self, fn: Any) -> Any:
        fake = self

        class Task:
            node = ""

            def options(self, **kw: Any) -> Any:
                task = Task()
                task.node = kw["scheduling_strategy"].node_id
                return task

            def remote(self, *args: Any) -> Any:
                return _Ref(fn(*fake.node_view(self.node, *args)))

        return Task()

    def wait(self, refs: list[Any], **kw: Any) -> tuple[list[Any], list[Any]]:
        return refs, []

    def get(self, ref: _Ref) -> Any:
        return ref.value


def _probe(tmp_path: Path, src: Path, node_view: Any) -> None:
    from ue8m0.checkpoint.source import open_checkpoint

    ckpt = open_checkpoint(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    shard = type("Shard", (), {"name": ckpt.shards[0]})()
    nodes = {"a" * 56: "10.0.0.1", "b" * 56: "10.0.0.2"}
    ray_exec._probe(_FakeRay(node_view), nodes, ckpt, dst, shard, "run")  # type: ignore[arg-type]


def _same(node: str, *args: Any) -> tuple[Any, ...]:
    return args


def test_probe_passes_when_every_node_shares_dst(src: Path, tmp_path: Path) -> None:
    _probe(tmp_path, src, _same)


@pytest.mark.parametrize(
    ("elsewhere", "message"),
    [
        (0, "does not share this directory with the driver"),  # its own DST: no probe file
        (2, "cannot read this source shard"),  # its own SRC
    ],
)
def test_probe_refuses_a_node_that_does_not_see_dst_or_src(
    src: Path, tmp_path: Path, elsewhere: int, message: str
) -> None:
    """Node b mounts something else at the path: one line naming the node and the reason."""
    other = tmp_path / "other-mount"
    other.mkdir()

    def view(node: str, *args: Any) -> tuple[Any, ...]:
        if node.startswith("b"):
            moved = list(args)
            moved[elsewhere] = str(other / Path(args[elsewhere]).name)
            return tuple(moved)
        return args

    with pytest.raises(CheckpointError, match=message) as info:
        _probe(tmp_path, src, view)
    assert "10.0.0.2" in str(info.value) and "\n" not in str(info.value)


def test_probe_refuses_a_node_with_other_ue8m0_sources(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ray_exec.package_digest()
    calls: list[int] = []

    def digest() -> str:  # the first node's probe sees other sources
        calls.append(1)
        return "0" * 64 if len(calls) == 1 else real

    monkeypatch.setattr(ray_exec, "package_digest", digest)
    with pytest.raises(CheckpointError, match="runs other ue8m0 sources than the driver"):
        _probe(tmp_path, src, _same)
