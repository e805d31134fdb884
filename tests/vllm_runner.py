"""Run INSIDE the vLLM (CPU) venv (see tests/vllm_env.py), never imported by the test suite:
load checkpoint directories one after the other with vLLM's offline ``vllm.LLM`` API on CPU
(no server, nothing listens) and print one JSON object on the last line of stdout.

    python vllm_runner.py REQUEST_JSON

REQUEST_JSON: ``{"models": {NAME: [DIR, DTYPE] or [DIR, DTYPE, OPTIONS], ...}, "prompts":
[[token ids], ...], "max_tokens": N, "logprobs": K}`` (DTYPE: vLLM's ``dtype``, ``bfloat16`` or
``float32``; OPTIONS: ``{"attention": vLLM's attention backend, e.g. "CPU_MLA" (else vLLM
chooses), "amx": false (vLLM sees a CPU without AMX tiles while it loads this model)}``;
``logprobs`` optional: with it each result also has ``greedy_logprobs``, per prompt and
generated token the K largest logprobs, largest first).
Before loading, three CPU kernels are registered where vLLM 0.32 has none (see the three
``register_*`` functions; the ``kernels`` and ``moe_experts`` fields of each result name the
linear kernels and MoE experts used, ``attention`` the attention implementation).
Output: ``{NAME: result, ...}``, each result
``{"ok": true, "load_s", "run_s", "prompt_logprobs": [[logprob of token i given the tokens
before it, for i >= 1], ...], "greedy": [[token ids], ...], "linear_methods": {class: count},
"kernels": {...}}`` or ``{"ok": false, "error": "<exception type>: <message>"}`` (with the
``linear_methods``, ``kernels``, ... fields when the model loaded and then failed; the exit
status is 0 either way: a loader's refusal is data for the tests). One process for all models:
importing vLLM costs more than loading a tiny model. ``UE8M0_VLLM_NO_AMX=1`` makes ``"amx":
false`` the default: on an AMX machine, it runs what CI machines without AMX run."""

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


def register_cpu_block_fp8_moe_fallback() -> None:
    """vLLM 0.32's CPU FP8 MoE experts (``CPUExpertsFp8``, ``CPUExpertsFp8W8A8``) need AMX
    too; on other CPUs ``select_fp8_moe_backend`` finds none and returns its ``NONE`` backend,
    and loading fails with "Unsupported FP8 MoE backend: NONE". Offer, LAST and on CPU only,
    vLLM's own ``EMULATION`` backend (its ``Fp8MoeBackend`` comment: dequantize-to-BF16
    emulation, weights passed through unchanged at load) with our experts class: a subclass
    of ``CPUExpertsFp8`` that runs on any CPU and, given the ``w13``/``w2`` and per-block
    float32 scales that vLLM's ``Fp8MoEMethod`` loaded, computes each routed expert as
    ``fp8 * scale`` per block in BF16 (``silu(gate) * up``, then ``down``), weighted by the
    router weights vLLM's own router chose, what ``CPUExpertsFp8`` computes with AMX
    (W8A16). Routing, the shared experts and the weight loader stay vLLM's."""
    import torch
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUExpertsFp8
    from vllm.model_executor.layers.fused_moe.oracle import fp8 as oracle
    from vllm.platforms import current_platform

    if getattr(oracle, "_ue8m0_cpu_moe_fallback", False):
        return

    def dequant(weight: torch.Tensor, scale: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        full = scale.float().repeat_interleave(rows, 1).repeat_interleave(cols, 2)
        return (weight.float() * full[:, : weight.shape[1], : weight.shape[2]]).to(torch.bfloat16)

    class CpuBlockFp8MoeDequantExperts(CPUExpertsFp8):  # type: ignore[misc]
        @staticmethod
        def _supports_current_device() -> bool:
            return bool(current_platform.is_cpu())

        @staticmethod
        def _supports_activation(activation: Any) -> bool:
            return bool(activation == MoEActivation.SILU)  # what apply computes

        def apply(
            self,
            output: torch.Tensor,
            hidden_states: torch.Tensor,
            w1: torch.Tensor,
            w2: torch.Tensor,
            topk_weights: torch.Tensor,
            topk_ids: torch.Tensor,
            activation: Any,
            global_num_experts: int,
            expert_map: Any,
            *,
            apply_router_weight_on_input: bool,
            **unused: Any,  # activation scales, workspaces: W8A16 quantizes no activation
        ) -> None:
            if apply_router_weight_on_input or expert_map is not None:
                raise NotImplementedError("CpuBlockFp8MoeDequantExperts: no EP, no input weights")
            rows, cols = self.quant_config.block_shape
            gate_up = dequant(w1, self.w1_scale, rows, cols)
            down = dequant(w2, self.w2_scale, rows, cols)
            x = hidden_states.to(torch.bfloat16)
            out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float32)
            for e in topk_ids.unique().tolist():
                token, slot = (topk_ids == e).nonzero(as_tuple=True)
                gate, up = (x[token] @ gate_up[e].T).chunk(2, dim=-1)
                y = (torch.nn.functional.silu(gate) * up) @ down[e].T
                out.index_add_(0, token, y.float() * topk_weights[token, slot, None].float())
            output.copy_(out.to(output.dtype))

    priority, kernels = oracle._get_priority_backends, oracle.backend_to_kernel_cls
    emulation = oracle.Fp8MoeBackend.EMULATION

    def _get_priority_backends(*args: Any, **kwargs: Any) -> list[Any]:
        backends = list(priority(*args, **kwargs))
        return [*backends, emulation] if current_platform.is_cpu() else backends

    def backend_to_kernel_cls(backend: Any) -> list[Any]:
        if backend == emulation and current_platform.is_cpu():
            return [CpuBlockFp8MoeDequantExperts]
        return list(kernels(backend))

    oracle._get_priority_backends = _get_priority_backends
    oracle.backend_to_kernel_cls = backend_to_kernel_cls
    oracle._ue8m0_cpu_moe_fallback = True


def _describe(model: Any) -> dict[str, dict[str, int]]:
    """Counts of the linear methods and kernels the loaded model's layers use, of the MoE
    layers' experts classes (``moe_experts``) and of the attention implementations."""
    methods: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    experts: Counter[str] = Counter()
    attention: Counter[str] = Counter()
    for _, module in model.named_modules():
        impl = getattr(module, "impl", None)
        if impl is not None and hasattr(module, "attn_backend"):
            attention[type(impl).__name__] += 1
        moe_kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        if moe_kernel is not None:
            experts[type(moe_kernel.fused_experts).__name__] += 1
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        methods[type(method).__name__] += 1
        for holder in (method, getattr(module, "scheme", None)):
            for attr in ("kernel", "fp8_linear", "mxfp8_linear"):
                kernel = getattr(holder, attr, None)
                if kernel is not None:
                    kernels[type(kernel).__name__] += 1
    return {
        "linear_methods": dict(methods),
        "kernels": dict(kernels),
        "moe_experts": dict(experts),
        "attention": dict(attention),
    }


def run_one(
    model: str, dtype: str, request: dict[str, Any], options: dict[str, Any], found: dict[str, Any]
) -> dict[str, Any]:
    """Load and run one model; what the loaded model uses goes into ``found`` at once (so a
    failure while it runs still names its kernels)."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    backend = options.get("attention")
    t0 = time.perf_counter()
    amx = torch.cpu._is_amx_tile_supported
    if not options.get("amx", os.environ.get("UE8M0_VLLM_NO_AMX") != "1"):
        torch.cpu._is_amx_tile_supported = lambda: False  # kernels are chosen while loading
    try:
        llm = LLM(
            model=model,
            dtype=dtype,
            max_model_len=128,
            enforce_eager=True,
            seed=0,
            max_num_seqs=4,
            disable_log_stats=True,
            attention_config={"backend": backend} if backend else None,
        )
    finally:
        torch.cpu._is_amx_tile_supported = amx
    try:
        load_s = time.perf_counter() - t0
        info = llm.apply_model(_describe)[0]
        found.update(info)
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
    register_cpu_block_fp8_moe_fallback()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    results: dict[str, Any] = {}
    for name, (model, dtype, *options) in request["models"].items():
        t0 = time.perf_counter()
        found: dict[str, Any] = {}
        try:
            results[name] = run_one(model, dtype, request, options[0] if options else {}, found)
        except Exception as exc:  # the verdict is data: which loader error, word for word
            traceback.print_exc(file=sys.stderr)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", **found}
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
