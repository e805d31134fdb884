"""A one-node Ray cluster on the loopback address, for the ``--ray`` tests.

Ray resolves ``127.0.0.1`` to the machine's routable address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is in the environment of ``ray start`` and of every
driver; with it every Ray port listens on 127.0.0.1. :func:`listeners` reads the kernel's socket
tables (``/proc/net/tcp*``, what ``ss -ltn`` shows) for the processes of the cluster, so a test
can refuse to run against a cluster that listens anywhere else.

The cluster is stopped by the process ids of its own processes (those naming its temp dir, and
their descendants), not with ``ray stop``, which would also stop any other Ray on the machine.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: what every ``ray start`` and driver of the tests needs in its environment
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port nothing listens on (on 127.0.0.1) right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we may read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):  # exited meanwhile
            continue
        found[int(entry.name)] = (ppid, cmd)
    return found


def _listen_inodes() -> dict[int, str]:
    """socket inode -> local address (``host:port``) of every listening TCP socket."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:  # pragma: no cover - no IPv6
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # each 32-bit word is in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # a dual-stack socket bound to an IPv4 address
            out[int(cols[9])] = f"{ip}:{int(hex_port, 16)}"
    return out


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.rsplit(":", 1)[0]).is_loopback


@dataclass
class LoopbackCluster:
    """``ray start --head`` on 127.0.0.1 with its state under ``temp_dir``."""

    temp_dir: Path
    num_cpus: int = 2
    port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, **LOOPBACK_ENV}

    def start(self) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ports = {
            "--port": self.port,
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        args = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1"]
        args += [f"{k}={v}" for k, v in ports.items()]
        args += [
            f"--num-cpus={self.num_cpus}",
            "--object-store-memory=300000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]
        done = subprocess.run(
            args, env=self.env(), capture_output=True, text=True, timeout=180, check=False
        )
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")

    def pids(self) -> set[int]:
        """The cluster's processes: those naming its temp dir, and their descendants."""
        procs = _processes()
        tag = str(self.temp_dir)
        mine = {pid for pid, (_, cmd) in procs.items() if tag in cmd and pid != os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in procs.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        return mine

    def raylet_pid(self) -> int:
        procs = _processes()
        tag = str(self.temp_dir)
        (pid,) = [p for p, (_, cmd) in procs.items() if "raylet/raylet " in cmd and tag in cmd]
        return pid

    def listeners(self) -> dict[str, int]:
        """address -> pid of every TCP listener of the cluster's processes."""
        inodes = _listen_inodes()
        out = {}
        for pid in self.pids():
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes:
                        out[inodes[inode]] = pid
        return out

    def check_loopback(self) -> dict[str, int]:
        """The listeners; raises when there is none or one is not on a loopback address."""
        found = self.listeners()
        if f"127.0.0.1:{self.port}" not in found:
            raise RuntimeError(f"the GCS port {self.port} is not among the listeners {found}")
        outside = {a: p for a, p in found.items() if not is_loopback(a)}
        if outside:
            raise RuntimeError(f"Ray listens outside the loopback address: {outside}")
        return found

    def stop(self) -> None:
        """SIGTERM the cluster's processes, then SIGKILL what is left after 3 s."""
        pids = self.pids()
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(alive(p) for p in pids):
                time.sleep(0.1)
            pids = {p for p in pids if alive(p)}
            if not pids:
                return


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_running(cluster: LoopbackCluster, task: str) -> list[int]:
    """The pids of the raylet's worker processes now running Ray task ``task`` (Ray titles a
    worker ``ray::<task name>`` while it runs one)."""
    raylet = cluster.raylet_pid()
    return [
        pid
        for pid, (ppid, cmd) in _processes().items()
        if ppid == raylet and cmd.startswith(f"ray::{task}")
    ]
