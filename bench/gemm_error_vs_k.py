"""Relative error of emulated block-scaled FP8 GEMMs against K, as in DeepSeek-V3's §3.3.2.

Quantizes random A (M×K, 1×128 blocks) and B (N×K, 128×128 blocks) to e4m3 with UE8M0 scales,
then compares ``ue8m0.gemm`` in ``hopper`` mode (bit-exact with an H200's FP8 tensor cores) with
and without promotion every 128 elements, the simpler ``limited`` model (a 14-bit accumulator)
without promotion, and ``fp32`` (exact block sums) against the ``exact`` float64 product of the
same quantized operands — so only accumulation error is measured, not quantization error.

    python bench/gemm_error_vs_k.py            # writes docs/img/gemm_error_vs_k.png
    python bench/gemm_error_vs_k.py --time     # also times one 4096³ GEMM per mode
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

import ue8m0

KS = (512, 1024, 2048, 4096, 8192, 16384)
OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "gemm_error_vs_k.png"

#: curve label -> gemm keyword arguments
CURVES: dict[str, dict[str, object]] = {
    "H200 (hopper), no promotion": {"mode": "hopper", "promote_every": None},
    "limited 14-bit model, no promotion": {"mode": "limited", "promote_every": None, "mma_k": 32},
    "H200 (hopper), promoted every 128 (DeepGEMM)": {"mode": "hopper", "promote_every": 128},
    "fp32 (exact block sums)": {"mode": "fp32"},
}


def _operands(rng: np.random.Generator, m: int, n: int, k: int, positive: bool) -> tuple:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k), dtype=np.float32)
    if positive:
        a, b = np.abs(a), np.abs(b)
    return ue8m0.quantize(a, (1, 128)), ue8m0.quantize(b, (128, 128))


def _one_scale(q: ue8m0.QuantizedTensor) -> ue8m0.QuantizedTensor:
    """``q``'s element codes with a single scale of 1 (a tensor-wise scaled operand)."""
    rows = q.shape[0] if q.block[0] == 1 else 1
    block = (1, -1) if q.block[0] == 1 else (-1, -1)
    return dataclasses.replace(q, scale=np.ones((rows, 1), np.float32), block=block)


def measure(m: int, n: int, seed: int, positive: bool) -> dict[str, list[float]]:
    """Max and Frobenius relative error per curve and K."""
    rng = np.random.default_rng(seed)
    errors: dict[str, list[float]] = {name: [] for name in CURVES}
    for k in KS:
        qa, qb = _operands(rng, m, n, k, positive)
        exact = ue8m0.gemm(qa, qb, "exact")
        unit = (_one_scale(qa), _one_scale(qb))
        unit_exact = ue8m0.gemm(*unit, "exact")
        for name, kwargs in CURVES.items():
            ops, ref = (qa, qb), exact
            if kwargs.get("promote_every", 128) is None:  # a tensor core applies block scales
                ops, ref = unit, unit_exact  # only when it promotes: the same codes, one scale
            c = ue8m0.gemm(*ops, **kwargs).astype(np.float64)  # type: ignore[arg-type]
            errors[name].append(float(np.linalg.norm(c - ref) / np.linalg.norm(ref)))
    return errors


def plot(results: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), sharey=True)
    for ax, (title, errors) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for (name, errs), marker in zip(errors.items(), "osv^", strict=True):
            ax.loglog(KS, errs, marker=marker, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(KS, [str(k) for k in KS])
        ax.set_xlabel("K (inner dimension)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("relative error ‖C − C_exact‖ / ‖C_exact‖")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(
        "e4m3, 1×128 × 128×128 UE8M0 blocks: accumulation error vs K "
        "(no promotion: the same codes, one scale)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def time_4096() -> None:
    rng = np.random.default_rng(0)
    qa, qb = _operands(rng, 4096, 4096, 4096, positive=False)
    for mode in ("exact", "fp32", "limited", "hopper"):
        start = time.perf_counter()
        ue8m0.gemm(qa, qb, mode)
        print(f"4096x4096x4096 {mode}: {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--time", action="store_true", help="also time 4096³ GEMMs")
    args = parser.parse_args(argv)
    results = {
        "inputs N(0, 1)": measure(args.m, args.n, args.seed, positive=False),
        "inputs |N(0, 1)| (no cancellation)": measure(args.m, args.n, args.seed, positive=True),
    }
    for title, errors in results.items():
        print(title)
        print(f"{'K':>6} " + " ".join(f"{name[:28]:>29}" for name in errors))
        for i, k in enumerate(KS):
            print(f"{k:>6} " + " ".join(f"{errs[i]:>29.2e}" for errs in errors.values()))
    plot(results, args.out)
    print(f"wrote {args.out}")
    if args.time:
        time_4096()


if __name__ == "__main__":
    main()
