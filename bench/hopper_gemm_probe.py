"""Measure a Hopper GPU's FP8 GEMM bits and compare them with ``ue8m0.gemm``'s models.

Not a test (it needs an NVIDIA Hopper GPU and the CUDA build of torch, which CI never has). Three
steps, so that the GPU machine only runs torch:

    python bench/hopper_gemm_probe.py prepare DIR        # here: operands, with ue8m0
    python bench/hopper_gemm_probe.py device DIR OUT     # on the GPU: torch / cuBLAS / Triton
    python bench/hopper_gemm_probe.py compare DIR OUT    # here: GPU bits vs every mode

The operands are 1×128 (activation) and 128×128 (weight) UE8M0 quantizations, M×N×K =
128×256×4096: ``gauss`` (Gaussian data), ``wide`` (the same scales, every element a uniformly
random finite code, so products span 2^-18 .. 2^17 and alignment losses show), in e4m3, e5m2
and e4m3 × e5m2. On the GPU: cuBLAS through ``torch._scaled_mm`` with unit per-tensor scales
(fast accumulation on and off) and through ``F.scaled_mm``'s block-scaled 1×128 × 128×128 path,
and Triton kernels whose accumulation is stated: one carrying the tensor core's accumulator over
the whole of K (``acc = tl.dot(a, b, acc)``, with ``max_num_imprecise_acc`` 32/64/128 too) and
one adding a fresh 128-element dot to a float32 total. ``compare`` prints, for each GPU result,
the share of outputs each ``ue8m0.gemm`` mode reproduces bit for bit, and ``--golden FILE`` saves
a 4×4 corner of every result with its operands for ``tests/test_gemm_hopper.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

M, N, K = 128, 256, 4096
SEED = 0
#: rows of A and B (so outputs) kept in the golden file
GOLDEN = 4
#: operand set -> element formats of A and B
SETS = {
    "gauss": ("e4m3", "e4m3"),
    "wide": ("e4m3", "e4m3"),
    "gauss_e5m2": ("e5m2", "e5m2"),
    "wide_e5m2": ("e5m2", "e5m2"),
    "mixed": ("e4m3", "e5m2"),
}
TORCH_DTYPE = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
#: GPU result -> the promotion interval it uses (None: never)
PROMOTE = {
    "cublas_tensorwise_fast1": None,
    "cublas_tensorwise_fast0": 128,
    "cublas_blockwise": 128,
    "triton_promoted": 128,
    "triton_carried_imprecise0": None,
    "triton_carried_imprecise32": 32,
    "triton_carried_imprecise64": 64,
    "triton_carried_imprecise128": 128,
}


def _operands(kind: str):  # type: ignore[no-untyped-def]
    from ue8m0 import quantize

    fa, fb = SETS[kind]
    rng = np.random.default_rng(SEED)
    a = quantize(rng.standard_normal((M, K)).astype(np.float32), (1, 128), fa)
    b = quantize((rng.standard_normal((N, K)) * 0.02).astype(np.float32), (128, 128), fb)
    if kind.startswith("wide"):
        a, b = (_random_codes(rng, q) for q in (a, b))
    return a, b


def _random_codes(rng: np.random.Generator, q):  # type: ignore[no-untyped-def]
    """``q`` with every element a uniformly random finite code of its format."""
    codes = np.arange(256, dtype=np.uint8)
    finite = codes[np.isfinite(codes.view(q.fmt.dtype).astype(np.float32))]
    return dataclasses.replace(q, data=rng.choice(finite, q.shape).view(q.fmt.dtype))


def _unit(q):  # type: ignore[no-untyped-def]
    """``q``'s elements with one scale of 1 for the whole tensor (the tensor-wise GPU calls)."""
    rows = q.shape[0] if q.block[0] == 1 else 1
    block = (1, -1) if q.block[0] == 1 else (-1, -1)
    return dataclasses.replace(q, scale=np.ones((rows, 1), np.float32), block=block)


def prepare(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for kind in SETS:
        a, b = _operands(kind)
        arrays |= {f"{kind}_a": a.codes, f"{kind}_b": b.codes}
        arrays |= {f"{kind}_sa": a.scale, f"{kind}_sb": b.scale}
    np.savez(root / "operands.npz", **arrays)
    print(f"operand sets {list(SETS)}: A {M}x{K} 1x128, B {N}x{K} 128x128 -> {root}")


# --------------------------------------------------------------------------- on the GPU


def _triton_kernels():  # type: ignore[no-untyped-def]
    """Two kernels kept apart on purpose (the recorded run used exactly these): one carries the
    tensor core's accumulator over K, the other adds a fresh BK-element dot to a float32 total."""
    import triton
    import triton.language as tl

    @triton.jit
    def carried(a_ptr, b_ptr, c_ptr, n, k, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                IMPRECISE: tl.constexpr):  # fmt: skip
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, k, BK):
            a = tl.load(a_ptr + rm[:, None] * k + (k0 + rk)[None, :])
            b = tl.load(b_ptr + rn[None, :] * k + (k0 + rk)[:, None])
            if IMPRECISE == 0:
                acc = tl.dot(a, b, acc)  # Triton's default for fp8 on sm90: never promote
            else:
                acc = tl.dot(a, b, acc, max_num_imprecise_acc=IMPRECISE)
        tl.store(c_ptr + rm[:, None] * n + rn[None, :], acc)

    @triton.jit
    def promoted(a_ptr, b_ptr, c_ptr, n, k, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr):  # fmt: skip
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, k, BK):
            a = tl.load(a_ptr + rm[:, None] * k + (k0 + rk)[None, :])
            b = tl.load(b_ptr + rn[None, :] * k + (k0 + rk)[:, None])
            acc += tl.dot(a, b)
        tl.store(c_ptr + rm[:, None] * n + rn[None, :], acc)

    return carried, promoted


def _record(results: dict, log: dict, name: str, fn) -> None:  # type: ignore[no-untyped-def,type-arg]
    try:
        results[name] = fn().cpu().numpy()
    except Exception as e:  # a probe records what the stack refuses
        log[name] = f"{type(e).__name__}: {str(e)[:300]}"


def device(root: Path, out: Path) -> None:
    import torch
    import torch.nn.functional as F

    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    log: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    ops = np.load(root / "operands.npz")
    results: dict[str, np.ndarray] = {}
    one = torch.ones((), device=dev)
    carried, promoted = _triton_kernels()
    grid = (M // 64, N // 64)

    def per_set(kind: str, a8, b8, sa, sb) -> None:  # type: ignore[no-untyped-def]
        for fast in (True, False):
            _record(results, log, f"{kind}.cublas_tensorwise_fast{int(fast)}", lambda f=fast: (
                torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                                 use_fast_accum=f)))  # fmt: skip
        _record(results, log, f"{kind}.cublas_blockwise", lambda: F.scaled_mm(
            a8, b8.t(), sa.t().contiguous().t(), F.ScalingType.BlockWise1x128, sb.t(),
            F.ScalingType.BlockWise128x128, output_dtype=torch.float32))  # fmt: skip

        def run(kern, **kw):  # type: ignore[no-untyped-def]
            c = torch.zeros((M, N), dtype=torch.float32, device=dev)
            kern[grid](a8, b8, c, N, K, BM=64, BN=64, BK=128, **kw)
            return c

        _record(results, log, f"{kind}.triton_promoted", lambda: run(promoted))
        for imprecise in (0, 32, 64, 128):
            _record(results, log, f"{kind}.triton_carried_imprecise{imprecise}",
                    lambda i=imprecise: run(carried, IMPRECISE=i))  # fmt: skip

    for kind, (fa, fb) in SETS.items():
        a8 = torch.from_numpy(ops[f"{kind}_a"]).to(dev).view(getattr(torch, TORCH_DTYPE[fa]))
        b8 = torch.from_numpy(ops[f"{kind}_b"]).to(dev).view(getattr(torch, TORCH_DTYPE[fb]))
        sa = torch.from_numpy(ops[f"{kind}_sa"]).to(dev)  # (M, K/128)
        sb = torch.from_numpy(ops[f"{kind}_sb"]).to(dev)  # (N/128, K/128)
        per_set(kind, a8, b8, sa, sb)
    bf16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    for dt in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
        to = getattr(torch, dt)
        _record(
            results,
            log,
            f"cast_{dt}_gpu",
            lambda t=to: bf16.to(dev).float().to(t).view(torch.uint8),
        )
        _record(results, log, f"cast_{dt}_cpu", lambda t=to: bf16.float().to(t).view(torch.uint8))
    np.savez(out / "gpu.npz", **results)
    (out / "gpu.json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log, indent=2))
    print("results:", sorted(results))


# --------------------------------------------------------------------------- back here


def _modes(a, b, promote: int | None):  # type: ignore[no-untyped-def]
    from ue8m0.gemm import gemm

    yield f"hopper promote_every={promote}", gemm(a, b, "hopper", promote_every=promote)
    yield "exact, rounded once to float32", gemm(a, b, "exact").astype(np.float32)
    if promote is not None:
        yield "fp32 (exact block sums)", gemm(a, b, "fp32")
    yield "limited (13 bits, rtz, k=32)", gemm(a, b, "limited", promote_every=promote, mma_k=32)


def compare(root: Path, out: Path, golden: Path | None = None) -> None:
    import ml_dtypes

    gpu = np.load(out / "gpu.npz")
    ops = np.load(root / "operands.npz")
    report: dict[str, dict[str, float]] = {}
    corners: dict[str, np.ndarray] = {}
    for name in sorted(gpu.files):
        if name.startswith("cast_"):
            continue
        kind, call = name.split(".")
        a, b = _operands(kind)
        assert (a.codes == ops[f"{kind}_a"]).all() and (b.codes == ops[f"{kind}_b"]).all()
        assert (a.scale == ops[f"{kind}_sa"]).all() and (b.scale == ops[f"{kind}_sb"]).all()
        if call != "cublas_blockwise":
            a, b = _unit(a), _unit(b)
        got = gpu[name]
        rows = {
            label: float(np.mean(got.view(np.uint32) == model.view(np.uint32)))
            for label, model in _modes(a, b, PROMOTE[call])
        }
        report[name] = rows
        print(f"{name:42s} " + "  ".join(f"{v:.4f} {k}" for k, v in rows.items()), flush=True)
        corners[f"{name}.c"] = got[:GOLDEN, :GOLDEN]
        corners[f"{name}.promote"] = np.array(PROMOTE[call] or 0)  # 0: never
    print()
    bf16 = np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    for dt in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
        if f"cast_{dt}_gpu" in gpu.files:
            g, c = gpu[f"cast_{dt}_gpu"], gpu[f"cast_{dt}_cpu"]
            with np.errstate(invalid="ignore", over="ignore"):
                ml = bf16.astype(getattr(ml_dtypes, dt)).view(np.uint8)
            same = int((g == c).sum())
            print(f"cast to {dt}, 65536 bf16: GPU == CPU torch {same}, GPU == ml_dtypes "
                  f"{int((g == ml).sum())}")  # fmt: skip
    (root / "hopper_probe_report.json").write_text(json.dumps(report, indent=2))
    if golden is not None:
        for kind in SETS:
            a, b = _operands(kind)
            corners |= {f"{kind}.a": a.codes[:GOLDEN], f"{kind}.b": b.codes[:GOLDEN]}
            corners |= {f"{kind}.sa": a.scale[:GOLDEN], f"{kind}.sb": b.scale[:1]}
            corners[f"{kind}.fmt"] = np.array(SETS[kind])
        np.savez_compressed(golden, **corners)
        print(f"golden corners -> {golden}")


if __name__ == "__main__":
    step, paths = sys.argv[1], [Path(p) for p in sys.argv[2:] if p != "--golden"]
    if step == "compare" and "--golden" in sys.argv:
        compare(paths[0], paths[1], paths[2])
    else:
        {"prepare": prepare, "device": device, "compare": compare}[step](*paths)
