"""Run INSIDE the vLLM (CPU) venv (see tests/vllm_env.py), never imported by the test suite:
load checkpoint directories one after the other with vLLM's offline ``vllm.LLM`` API on CPU
(no server, nothing listens) and print one JSON object on the last line of stdout.

    python vllm_runner.py REQUEST_JSON

REQUEST_JSON: ``{"models": {NAME: DIR, ...}, "prompts": [[token ids], ...], "max_tokens": N,
"mxfp8_cpu_emulation": bool}``. Output: ``{NAME: result, ...}``, each result
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
    (dequantize, then a BF16 matmul) first in the CPU platform's MXFP8 kernel list."""
    from vllm.model_executor.kernels.linear import _POSSIBLE_MXFP8_KERNELS
    from vllm.model_executor.kernels.linear.mxfp8.emulation import EmulationMxfp8LinearKernel
    from vllm.platforms import PlatformEnum

    kernels = _POSSIBLE_MXFP8_KERNELS.setdefault(PlatformEnum.CPU, [])
    if EmulationMxfp8LinearKernel not in kernels:
        kernels.insert(0, EmulationMxfp8LinearKernel)


def _describe(model: Any) -> dict[str, dict[str, int]]:
    """Counts of the linear methods and kernels the loaded model's layers use."""
    methods: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for _, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        methods[type(method).__name__] += 1
        for attr in ("kernel", "fp8_linear", "w8a8_block_fp8_linear", "mxfp8_linear"):
            kernel = getattr(method, attr, None)
            if kernel is not None:
                kernels[f"{attr}={type(kernel).__name__}"] += 1
    return {"linear_methods": dict(methods), "kernels": dict(kernels)}


def run_one(model: str, request: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(
        model=model,
        dtype="bfloat16",
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
    return {
        "ok": True,
        "load_s": round(load_s, 2),
        "run_s": round(run_s, 2),
        "prompt_logprobs": logprobs,
        "greedy": greedy,
        **info,
    }


def run(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("mxfp8_cpu_emulation"):
        register_cpu_mxfp8_emulation()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    results: dict[str, Any] = {}
    for name, model in request["models"].items():
        t0 = time.perf_counter()
        try:
            results[name] = run_one(model, request)
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
