"""Run INSIDE the vLLM (CPU) venv (see tests/vllm_env.py), never imported by the test suite:
load checkpoint directories one after the other with vLLM's offline ``vllm.LLM`` API on CPU
(no server, nothing listens) and print one JSON object on the last line of stdout.

    python vllm_runner.py REQUEST_JSON

REQUEST_JSON: ``{"models": {NAME: [DIR, DTYPE], ...}, "prompts": [[token ids], ...],
"max_tokens": N, "logprobs": K}`` (DTYPE: vLLM's ``dtype``, ``bfloat16`` or ``float32``;
``logprobs`` optional: with it each result also has ``greedy_logprobs``, per prompt and
generated token the K largest logprobs, largest first).
Before loading, two CPU kernels are registered where vLLM 0.32 has none (see the two
``register_*`` functions; the ``kernels`` field of each result names the kernel used). Output: ``{NAME: result, ...}``, each result
``{"ok": true, "load_s", "run_s", "prompt_logprobs": [[logprob of token i given the tokens
before it, for i >= 1], ...], "greedy": [[token ids], ...], "linear_methods": {class: count},
"kernels": {...}}`` or ``{"ok": false, "error": "<exception type>: <message>"}`` (the exit
status is 0 either way: a loader's refusal is data for the tests). One process for all models:
importing vLLM costs more than loading a tiny model."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any

#: small, deterministic CPU settings (1 GiB KV cache, 2 threads, one process)
ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "2",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def register_cpu_mxfp8_emulation() -> None:
    """vLLM 0.32 has no CPU MXFP8 linear kernel: put its own ``EmulationMxfp8LinearKernel``
    (dequantize at load, then a BF16 matmul) in the CPU platform's MXFP8 kernel list."""
    from vllm.model_executor.kernels.linear import _POSSIBLE_MXFP8_KERNELS
    from vllm.model_executor.kernels.linear.mxfp8.emulation import EmulationMxfp8LinearKernel
    from vllm.platforms import PlatformEnum

    kernels = _POSSIBLE_MXFP8_KERNELS.setdefault(PlatformEnum.CPU, [])
    if EmulationMxfp8LinearKernel not in kernels:
        kernels.append(EmulationMxfp8LinearKernel)


def register_cpu_block_fp8_fallback() -> None:
    """vLLM 0.32's CPU block-FP8 kernels (``CPUFp8W8A8BlockScaledMMKernel``,
    ``CPUFp8BlockScaledMMKernel``) need AMX tiles (Sapphire Rapids or newer) and vLLM has no
    CPU fallback, so on other CPUs every FP8 block checkpoint fails with "Failed to find a
    kernel that can implement the ScaledMM linear layer". Append, LAST in the CPU list (vLLM's
    own kernels win where they run), a W8A16 emulation: after vLLM's loader has filled the
    layer (fused shards concatenated, scales copied into its float32 parameters), the weight
    becomes ``fp8 * scale`` per block (a partial last block cropped) in BF16, and the linear
    is a BF16 matmul, what ``CPUFp8BlockScaledMMKernel`` computes with AMX."""
    import torch
    from vllm.model_executor.kernels.linear import _POSSIBLE_FP8_BLOCK_KERNELS
    from vllm.model_executor.kernels.linear.scaled_mm.BlockScaledMMLinearKernel import (
        Fp8BlockScaledMMLinearKernel,
    )
    from vllm.model_executor.utils import replace_parameter
    from vllm.platforms import PlatformEnum, current_platform

    class CpuBlockFp8DequantKernel(Fp8BlockScaledMMLinearKernel):  # type: ignore[misc]
        apply_input_quant = False

        @classmethod
        def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
            return (True, None) if current_platform.is_cpu() else (False, "CPU only")

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            params = self._get_layer_params(layer)
            weight = params.weight.data.to(torch.float32)
            scale = params.block_scale.data.to(torch.float32)
            rows, cols = self.weight_group_shape.row, self.weight_group_shape.col
            full = scale.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
            full = full[: weight.shape[0], : weight.shape[1]]
            replace_parameter(layer, params.WEIGHT, (weight * full).to(torch.bfloat16))

        def apply_block_scaled_mm(
            self, A: torch.Tensor, B: torch.Tensor, As: torch.Tensor, Bs: torch.Tensor
        ) -> torch.Tensor:
            return torch.nn.functional.linear(A, B.to(A.dtype))

    kernels = _POSSIBLE_FP8_BLOCK_KERNELS.setdefault(PlatformEnum.CPU, [])
    if not any(k.__name__ == CpuBlockFp8DequantKernel.__name__ for k in kernels):
        kernels.append(CpuBlockFp8DequantKernel)


def _describe(model: Any) -> dict[str, dict[str, int]]:
    """Counts of the linear methods and kernels the loaded model's layers use."""
    methods: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for _, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        methods[type(method).__name__] += 1
        for holder in (method, getattr(module, "scheme", None)):
            for attr in ("kernel", "fp8_linear", "mxfp8_linear"):
                kernel = getattr(holder, attr, None)
                if kernel is not None:
                    kernels[type(kernel).__name__] += 1
    return {"linear_methods": dict(methods), "kernels": dict(kernels)}


def run_one(model: str, dtype: str, request: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(
        model=model,
        dtype=dtype,
        max_model_len=128,
        enforce_eager=True,
        seed=0,
        max_num_seqs=4,
        disable_log_stats=True,
    )
    try:
        load_s = time.perf_counter() - t0
        info = llm.apply_model(_describe)[0]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in request["prompts"]]
        params = SamplingParams(
            temperature=0.0,
            max_tokens=int(request.get("max_tokens", 8)),
            prompt_logprobs=0,
            detokenize=False,
            ignore_eos=True,
            logprobs=request.get("logprobs"),
        )
        t1 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        run_s = time.perf_counter() - t1
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    logprobs, greedy = [], []
    for prompt, out in zip(request["prompts"], outputs, strict=True):
        # prompt_logprobs[0] is None (nothing predicts the first token); entry i holds the
        # logprob of the prompt's own token i (rank-0 logprobs add only the actual token)
        logprobs.append([out.prompt_logprobs[i][tok].logprob for i, tok in enumerate(prompt) if i])
        greedy.append(list(out.outputs[0].token_ids))
    top: dict[str, Any] = {}
    if request.get("logprobs"):  # per step: the k best of what vLLM returns (k + the chosen one)
        k = int(request["logprobs"])
        top["greedy_logprobs"] = [
            [sorted((lp.logprob for lp in step.values()), reverse=True)[:k] for step in steps]
            for steps in (out.outputs[0].logprobs for out in outputs)
        ]
    return {
        "ok": True,
        "load_s": round(load_s, 2),
        "run_s": round(run_s, 2),
        "prompt_logprobs": logprobs,
        "greedy": greedy,
        **top,
        **info,
    }


def run(request: dict[str, Any]) -> dict[str, Any]:
    register_cpu_mxfp8_emulation()
    register_cpu_block_fp8_fallback()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    results: dict[str, Any] = {}
    for name, (model, dtype) in request["models"].items():
        t0 = time.perf_counter()
        try:
            results[name] = run_one(model, dtype, request)
        except Exception as exc:  # the verdict is data: which loader error, word for word
            traceback.print_exc(file=sys.stderr)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            cleanup_dist_env_and_memory()
        results[name]["total_s"] = round(time.perf_counter() - t0, 2)
        print(f"[vllm_runner] {name}: {results[name]['total_s']} s", file=sys.stderr, flush=True)
    return results


def main() -> None:
    request = json.loads(sys.argv[1])
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    print(json.dumps(run(request)))


if __name__ == "__main__":
    main()
