"""Issue 14 item 6, greedy tokens: on a tiny Llama trained here (tests/trained_model.py: a few
hundred CPU steps on a synthetic language it learns exactly), vLLM's CPU build generates the
same greedy tokens from ``ue8m0 quantize``'s FP8 output as from the BF16 model, which are the
tokens transformers' BF16 ``generate`` picks.

tests/test_vllm_cpu.py compares logprobs on random models, whose near-ties make greedy tokens
meaningless; a trained model's top-1 beats its top-2 by several logits all along the greedy
path, so its tokens are a fair check. The check bites: an exponent off by one in every scale
(what a wrong UE8M0 bias does) changes most tokens. Greedy tokens are coarse: an exponent off by
one in a single layer leaves them as they are, so the top-1/top-2 margins along the path are
compared as well, and that case moves them by several logits.

All checkpoints are loaded in one vLLM process (tests/vllm_runner.py). Nothing here skips."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from ckpt_fixtures import cli_ok
from ckpt_models import FUSED_LINEARS
from trained_model import sentence, train_tiny_llama
from vllm_env import run_vllm

#: (mode, first content index) of each prompt: ``<s> MODE`` and PROMPT_LEN content tokens
STARTS = [(0, 0), (1, 17), (2, 50), (3, 99)]
PROMPT_LEN = 4
PROMPTS = [sentence(mode, start, PROMPT_LEN) for mode, start in STARTS]
MAX_TOKENS = 16
#: the smallest top-1/top-2 logit margin allowed along the BF16 greedy path (measured ~7)
MIN_MARGIN = 3.0
#: FP8 margins vs BF16 margins, step by step, in logits (measured <= ~0.4)
MARGIN_TOL = 1.0

#: case -> ``ue8m0 quantize`` options
QUANTIZED = {"default": [], "compressed_tensors": ["--format", "compressed-tensors"]}
#: case -> the default output with these tensors' scales doubled (exponent + 1)
BROKEN = {
    "off_by_one_everywhere": ".weight_scale_inv",
    "off_by_one_v0": "layers.0.self_attn.v_proj.",
}


def _doubled_scales(fp8: Path, dst: Path, match: str) -> Path:
    """A copy of ``fp8`` with every scale whose name contains ``match`` multiplied by 2."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(fp8, dst)
    tensors = load_file(str(fp8 / "model.safetensors"))
    names = [k for k in tensors if k.endswith(".weight_scale_inv") and match in k]
    assert names, match
    for name in names:
        tensors[name] = tensors[name] * 2
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _margins(top2: Any) -> np.ndarray:
    """[prompt, step] top-1 minus top-2 logprob (= logit) from [prompt, step, 2] logprobs."""
    arr = np.array(top2, dtype=np.float64)
    return arr[..., 0] - arr[..., 1]


def _transformers_greedy(path: Path) -> tuple[list[list[int]], np.ndarray]:
    """transformers' (CPU, BF16) greedy tokens per prompt and the margins along them."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    tokens, top2 = [], []
    for prompt in PROMPTS:
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        tokens.append(out.sequences[0, len(prompt) :].tolist())
        top2.append([step[0].float().topk(2).values.tolist() for step in out.logits])
    return tokens, _margins(top2)


class Runs:
    """The checkpoints, transformers' BF16 greedy path, and vLLM's verdict on each checkpoint."""

    def __init__(self, root: Path) -> None:
        t0 = time.monotonic()
        bf16 = train_tiny_llama(root / "bf16")
        self.train_s = time.monotonic() - t0
        self.ckpts = {"bf16": bf16}
        for name, options in QUANTIZED.items():
            self.ckpts[name] = root / name
            cli_ok("quantize", bf16, root / name, "-q", *options)
        for name, match in BROKEN.items():
            self.ckpts[name] = _doubled_scales(self.ckpts["default"], root / name, match)
        self.hf_tokens, self.hf_margins = _transformers_greedy(bf16)
        t1 = time.monotonic()
        models = {k: (v, "bfloat16") for k, v in self.ckpts.items()}
        self.vllm = run_vllm(models, PROMPTS, max_tokens=MAX_TOKENS, logprobs=2)
        self.vllm_s = time.monotonic() - t1
        print(f"train {self.train_s:.1f} s, vLLM (all {len(models)} models) {self.vllm_s:.1f} s")
        for name, r in self.vllm.items():
            summary = {
                k: r.get(k) for k in ("ok", "error", "total_s", "load_s", "run_s", "kernels")
            }
            print(f"vllm {name}: {summary}")

    def greedy(self, case: str) -> list[list[int]]:
        result = self.vllm[case]
        assert result["ok"], result.get("error")
        return list(result["greedy"])

    def margins(self, case: str) -> np.ndarray:
        return _margins(self.vllm[case]["greedy_logprobs"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("trained"))


def _differing(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x != y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_the_trained_model_speaks_its_language_confidently(runs: Runs) -> None:
    """The premise: transformers' BF16 greedy continuation of each prompt is the language's
    own (each token the permutation of the one before), by a wide margin at every step."""
    for (mode, start), tokens in zip(STARTS, runs.hf_tokens, strict=True):
        assert tokens == sentence(mode, start, PROMPT_LEN + MAX_TOKENS)[-MAX_TOKENS:]
    print(f"transformers BF16: min margin {runs.hf_margins.min():.2f} logits")
    assert runs.hf_margins.min() > MIN_MARGIN


def test_vllm_bf16_greedy_equals_transformers(runs: Runs) -> None:
    assert runs.greedy("bf16") == runs.hf_tokens
    assert runs.vllm["bf16"]["linear_methods"]["UnquantizedLinearMethod"] == FUSED_LINEARS
    diff = np.abs(runs.margins("bf16") - runs.hf_margins).max()
    print(f"vLLM vs transformers BF16: max margin difference {diff:.3f}")
    assert diff < MARGIN_TOL


@pytest.mark.parametrize("case", list(QUANTIZED))
def test_fp8_greedy_tokens_equal_the_bf16_models(runs: Runs, case: str) -> None:
    """Every linear FP8 (a vLLM FP8 kernel each), and the same 16 greedy tokens per prompt as
    the BF16 model in vLLM and in transformers; the margins move by well under a logit."""
    assert runs.greedy(case) == runs.greedy("bf16") == runs.hf_tokens
    assert sum(runs.vllm[case]["kernels"].values()) == FUSED_LINEARS, runs.vllm[case]
    margins = runs.margins(case)
    diff = np.abs(margins - runs.margins("bf16")).max()
    print(f"{case}: min margin {margins.min():.2f}, max margin change vs BF16 {diff:.3f} logits")
    assert diff < MARGIN_TOL


def test_an_exponent_off_by_one_in_every_scale_changes_the_greedy_tokens(runs: Runs) -> None:
    """The equality above can fail: every weight x2 (a UE8M0 bias off by one) is loaded as
    FP8 like the good output, and most of its greedy tokens differ."""
    case = "off_by_one_everywhere"
    assert sum(runs.vllm[case]["kernels"].values()) == FUSED_LINEARS
    differing = _differing(runs.greedy(case), runs.greedy("bf16"))
    print(f"{case}: {differing} of {len(PROMPTS) * MAX_TOKENS} greedy tokens differ")
    assert differing > len(PROMPTS) * MAX_TOKENS // 2


def test_an_exponent_off_by_one_in_one_layer_keeps_the_tokens_but_moves_the_margins(
    runs: Runs,
) -> None:
    """What greedy tokens cannot see (layer 0's v_proj x2: the margins are wide enough that
    every token stays), the margin comparison above does."""
    case = "off_by_one_v0"
    assert runs.greedy(case) == runs.greedy("bf16")
    diff = np.abs(runs.margins(case) - runs.margins("bf16")).max()
    print(f"{case}: max margin change vs BF16 {diff:.3f} logits")
    assert diff > 3 * MARGIN_TOL
