"""Test peers of DeepSeek's own FP8 code, written here from the published algorithms.

Source read (not copied): github deepseek-ai/DeepSeek-V3, commit 9b4e978 (2025-08-27, the V3.1
``scale_fmt="ue8m0"`` change b15f0db and its two act_quant fixes included):

* :func:`weight_dequant` follows ``inference/kernel.py`` ``weight_dequant`` and
  ``weight_dequant_kernel``: a 2-D grid of 128x128 programs; program ``(i, j)`` loads the
  in-bounds part of its tile (a mask: a partial block at the bottom or right edge is read and
  written only where the weight has elements), converts it to float32, multiplies by the one
  scale at flat index ``i * cdiv(N, 128) + j`` of the contiguous scale tensor (so a grid of
  ``cdiv(M, 128) x cdiv(N, 128)`` is read in place, partial blocks included) and stores into a
  tensor of torch's default dtype (bfloat16 under ``fp8_cast_bf16.py``). The float32 product is
  rounded to bfloat16 by Triton's store: ``semantic.cast`` downcasts with ``create_fp_trunc``
  (LLVM ``fptrunc``, round to nearest even) — here ``Tensor.to(torch.bfloat16)``, also RNE.
  The scale is loaded in its own dtype and promoted to float32 for the product, so a U8 scale is
  multiplied in as its byte value (127 -> 127.0). Both inputs must be contiguous and 2-D
  (``AssertionError`` otherwise: a 3-D expert stack stops the converter).
* Launching a Triton kernel types each tensor pointer from its torch dtype
  (``triton/_utils.py`` ``canonicalize_dtype``, a dict lookup): ``torch.float8_e8m0fnu`` is not
  in it, so the launch raises ``KeyError('float8_e8m0fnu')`` (measured with Triton 3.9.0, both
  compiled-path ``mangle_type`` and ``TRITON_INTERPRET=1``). :func:`triton_pointer` raises the
  same.
* :func:`fp8_cast_bf16` follows ``inference/fp8_cast_bf16.py`` ``main``: read
  ``model.safetensors.index.json`` (required); for each ``*.safetensors`` file in sorted order,
  load it; drop every tensor whose name ends with ``_scale_inv``; take every tensor whose element
  size is 1 byte as FP8 (F8_E4M3, F8_E5M2, but also I8/U8/BOOL) and look up
  ``NAME_scale_inv`` through the index's weight map (in whatever shard holds it). The
  ``try`` covers the look-up *and* the dequantization: a ``KeyError`` from either prints
  ``Warning: Missing scale_inv tensor for NAME, skipping conversion`` and writes the 1-byte
  tensor unconverted. So F8_E8M0 scales (loaded by safetensors >= 0.6 as
  ``torch.float8_e8m0fnu``, refused by the launcher with a KeyError) leave FP8 weights in the
  "BF16" output. Any other exception (the 2-D assertion) ends the run, after the earlier
  shards were written and before the index. Each shard is saved with ``save_file`` and no
  metadata; the index is rewritten as ``{"metadata": {}, "weight_map": ...}`` with the scale
  names of the weights whose scale was *found* removed (the weight map's order kept, total_size
  dropped); ``config.json`` is neither copied nor edited. With ``requirements.txt``'s pins
  (safetensors 0.4.5, torch 2.4.1) a shard holding an F8_E8M0 tensor does not load at all:
  ``SafetensorError: Error while deserializing header: InvalidHeaderDeserialization`` (measured).
* :func:`act_quant` follows ``inference/kernel.py`` ``act_quant`` / ``act_quant_kernel``: one
  program per 128 contiguous elements of the last dim (which 128 must divide); ``amax`` of the
  float32 ``|x|``, ``max(amax, 1e-4)``, ``s = amax / 448`` in float32; under
  ``scale_fmt="ue8m0"`` ``s = exp2(ceil(log2(s)))``; ``y = x / s`` (a division) cast to e4m3.
  Here ``log2`` is the correctly rounded float32 log2 (the float64 one rounded once). The
  Triton interpreter calls numpy's float32 ``log2`` and a GPU its own: they can give another
  scale only when ``s`` lies a few float32 ulps above a power of two. The cast is RNE and
  saturates at 448, as Triton's NVIDIA lowering (``cvt.rn.satfinite``; read, not run here) does
  (``y`` never exceeds 448 by more than a hair, so a non-saturating RNE cast gives 448 too).
  The Triton interpreter's own float32 -> e4m3 cast is not RNE (docs/loaders.md).
"""

from __future__ import annotations

import json
import os
from glob import glob

import torch

#: DeepSeek's block edge, e4m3's max and act_quant's amax clamp
BLOCK = 128
E4M3_MAX = 448.0
ACT_EPS = 1e-4
#: the warning fp8_cast_bf16.py prints for a 1-byte tensor it leaves unconverted
MISSING = "Warning: Missing scale_inv tensor for {}, skipping conversion"

#: torch dtypes whose pointers Triton's launcher types (canonicalize_dtype); others: KeyError
_TRITON_POINTER_DTYPES = {
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2,
    torch.float8_e5m2fnuz,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
}


def triton_pointer(t: torch.Tensor) -> None:
    """What launching a Triton kernel on ``t`` does to it: nothing, or ``KeyError(dtype name)``."""
    if t.dtype not in _TRITON_POINTER_DTYPES:
        raise KeyError(str(t.dtype).split(".")[-1])


def weight_dequant(x: torch.Tensor, s: torch.Tensor, block_size: int = BLOCK) -> torch.Tensor:
    """bfloat16 ``x * s`` per ``block_size`` square, as ``kernel.py`` ``weight_dequant``."""
    assert x.is_contiguous() and s.is_contiguous(), "Input tensors must be contiguous"
    assert x.dim() == 2 and s.dim() == 2, "Input tensors must have 2 dimensions"
    for t in (x, s):
        triton_pointer(t)
    m, n = x.shape
    per_row = -(-n // block_size)
    rows = torch.arange(m) // block_size
    cols = torch.arange(n) // block_size
    flat = rows[:, None] * per_row + cols[None, :]  # the program's one scale, read in place
    if flat.numel() and int(flat.max()) >= s.numel():
        raise IndexError("the kernel would read past the scale tensor")
    product = x.to(torch.float32) * s.reshape(-1)[flat].to(torch.float32)
    return product.to(torch.bfloat16)


def act_quant(
    x: torch.Tensor, block_size: int = BLOCK, scale_fmt: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 ``y`` and float32 scales ``s`` (one per ``block_size`` of the last dim), as
    ``kernel.py`` ``act_quant``."""
    assert x.is_contiguous(), "Input tensor must be contiguous"
    assert x.size(-1) % block_size == 0, "Last dimension size must be divisible by block_size"
    blocks = x.to(torch.float32).reshape(-1, block_size)
    amax = blocks.abs().amax(dim=1).clamp_min(torch.tensor(ACT_EPS, dtype=torch.float32))
    s = amax / torch.tensor(E4M3_MAX, dtype=torch.float32)
    if scale_fmt == "ue8m0":
        log2 = torch.log2(s.to(torch.float64)).to(torch.float32)  # correctly rounded
        s = torch.exp2(torch.ceil(log2))
    y = (blocks / s[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return y.reshape(x.shape), s.reshape(*x.shape[:-1], x.size(-1) // block_size)


def fp8_cast_bf16(fp8_path: str | os.PathLike[str], bf16_path: str | os.PathLike[str]) -> None:
    """Convert ``fp8_path`` into ``bf16_path`` as ``inference/fp8_cast_bf16.py`` ``main`` does
    (on CPU; its CUDA placement and its two-shard cache change nothing in what it writes)."""
    from safetensors.torch import load_file, save_file

    fp8_path, bf16_path = os.fspath(fp8_path), os.fspath(bf16_path)
    os.makedirs(bf16_path, exist_ok=True)
    with open(os.path.join(fp8_path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    converted: list[str] = []

    def get_tensor(name: str) -> torch.Tensor:
        file_name = weight_map[name]  # KeyError when the index does not name it
        if file_name not in loaded:
            loaded[file_name] = load_file(os.path.join(fp8_path, file_name))
        return loaded[file_name][name]  # KeyError when that shard does not hold it

    for path in sorted(glob(os.path.join(fp8_path, "*.safetensors"))):
        file_name = os.path.basename(path)
        state = loaded[file_name] = load_file(path)
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            if name.endswith("_scale_inv"):
                continue
            if tensor.element_size() == 1:
                try:
                    scale = get_tensor(f"{name}_scale_inv")
                    converted.append(name)
                    out[name] = weight_dequant(tensor, scale)
                except KeyError:
                    print(MISSING.format(name))
                    out[name] = tensor
            else:
                out[name] = tensor
        save_file(out, os.path.join(bf16_path, file_name))
    for name in converted:
        weight_map.pop(f"{name}_scale_inv", None)
    with open(os.path.join(bf16_path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
