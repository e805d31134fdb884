"""What the vLLM tests share: vLLM's verdicts beside the checkpoints they were run on, the
logprob comparison with transformers, and what ``ue8m0 verify --engine vllm`` predicts."""

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
