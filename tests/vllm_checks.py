"""What the vLLM tests share: vLLM's verdicts beside the checkpoints they were run on, the
logprob comparison with transformers, what ``ue8m0 verify --engine vllm`` predicts, and
hand-made checkpoints (modules of an FP8 output put back in BF16)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_fixtures import run_cli
from ckpt_models import prompt_logprobs


@dataclass(frozen=True)
class Runs:
    """The checkpoints (name -> directory; ``dq_<name>``: the dequantized twin), the prompts
    and vLLM's verdict on each checkpoint it loaded (all in one vLLM process)."""

    ckpts: dict[str, Path]
    prompts: list[list[int]]
    vllm: dict[str, dict[str, Any]]
    #: transformers' prompt logprobs per checkpoint name, computed once
    reference: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def error(self, case: str, against: str | None = None) -> float:
        """The largest |vLLM - transformers| prompt logprob of ``case``, transformers run on
        ``against`` (default: the case's dequantized twin)."""
        result = self.vllm[case]
        assert result["ok"], result.get("error")
        name = against or "dq_" + case
        path = self.ckpts[name]
        if name not in self.reference:
            self.reference[name] = prompt_logprobs(path, self.prompts)
        err = float(np.abs(np.array(result["prompt_logprobs"]) - self.reference[name]).max())
        print(f"{case}: max |vLLM - transformers({path.name})| logprob {err:.5f}")
        return err


def verify_vllm(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``ue8m0 verify --engine vllm`` says vLLM does with ``path``."""
    capsys.readouterr()  # what the test printed so far is not verify's output
    _, out, _ = run_cli(["verify", path, "--json", "--engine", "vllm"], capsys)
    return str(json.loads(out)["engines"]["vllm"]["verdict"])


def write_like(model: Path, dst: Path, tensors: dict[str, Any], config: dict[str, Any]) -> Path:
    """A checkpoint directory with ``model``'s other files (tokenizer, generation config),
    ``tensors`` in one ``model.safetensors`` and ``config``."""
    from safetensors.torch import save_file

    dst.mkdir()
    for f in model.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    (dst / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def split_modules(src: Path, fp8: Path, dst: Path, modules: list[str]) -> Path:
    """``fp8`` (an output of ``src``) with ``modules`` back in BF16 from ``src`` and listed
    in both skip lists: what a converter that decides per tensor writes."""
    from safetensors.torch import load_file

    tensors = load_file(str(fp8 / "model.safetensors"))
    source = load_file(str(src / "model.safetensors"))
    config = json.loads((fp8 / "config.json").read_text())
    for module in modules:
        tensors[module + ".weight"] = source[module + ".weight"]
        del tensors[module + ".weight_scale_inv"]
        for key in ("modules_to_not_convert", "ignored_layers"):
            config["quantization_config"][key].append(module)
    return write_like(fp8, dst, tensors, config)
