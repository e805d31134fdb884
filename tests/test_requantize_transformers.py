"""transformers (CPU) loads the requantized DeepSeek-layout output of an FP32-scale checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckpt_fixtures import all_tensors, run_cli
from test_checkpoint_transformers import _load, _logits, tiny_llama, torch

__all__ = ["tiny_llama"]  # the module fixture, shared with the checkpoint test


def test_transformers_loads_requantized_output(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp32, req, dq = tmp_path / "fp32", tmp_path / "req", tmp_path / "dq"
    assert run_cli(["quantize", tiny_llama, fp32, "-q", "--scale-rule", "fp32"], capsys)[0] == 0
    assert run_cli(["requantize", fp32, req, "-q"], capsys)[0] == 0
    assert run_cli(["dequantize", req, dq, "-q"], capsys)[0] == 0
    qc = json.loads((req / "config.json").read_text())["quantization_config"]
    assert qc["scale_fmt"] == "ue8m0"

    model = _load(req)
    state = model.state_dict()  # type: ignore[attr-defined]
    ours = all_tensors(dq)
    assert len([n for n in all_tensors(req) if n.endswith("_scale_inv")]) == 14
    for name, want in ours.items():
        got = state[name].contiguous().view(torch.int16).numpy()
        np.testing.assert_array_equal(got, want.view(np.int16), err_msg=name)

    ids = torch.arange(32).reshape(2, 16) * 7 % 256
    ref = _logits(_load(tiny_llama), ids)
    got = _logits(model, ids)
    rel = float((got - ref).norm() / ref.norm())
    print(f"requantized logits vs BF16: rel. error {rel:.4f}")
    assert rel < 0.1
