"""``verify``: check a checkpoint end to end, and optionally against its source.

Every check is recorded (name, passed, detail, offending tensors) so the CLI can print a
table or JSON and exit non-zero when any failed. Data is read in slabs, as when converting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ue8m0.api import QuantizedTensor, dequantize
from ue8m0.checkpoint.fp8source import Fp8Reader
from ue8m0.checkpoint.jsonio import load_json
from ue8m0.checkpoint.pairs import Fp8Weight, pair_fp8_weights, read_scale
from ue8m0.checkpoint.plan_dequantize import undeclared_block
from ue8m0.checkpoint.registry import FMT_OF_TAG, element_fmt, is_scale_name, module_of
from ue8m0.checkpoint.safetensors import DTYPES, FLOAT_TAGS, FP8_TAGS
from ue8m0.checkpoint.scales import decode_scale, is_power_of_two
from ue8m0.checkpoint.slabs import COPY_BYTES, copy_pieces, slabs
from ue8m0.checkpoint.source import MANIFEST_NAME, Checkpoint, open_checkpoint
from ue8m0.checkpoint.writer import file_checksum
from ue8m0.errors import CheckpointError
from ue8m0.formats import decode_table
from ue8m0.reference import expand_scale

MAX_LISTED = 20


@dataclass
class Check:
    name: str
    passed: bool = True
    detail: str = ""
    tensors: list[str] = field(default_factory=list)

    def fail(self, tensor: str, why: str) -> None:
        self.passed = False
        if len(self.tensors) < MAX_LISTED:
            self.tensors.append(f"{tensor}: {why}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "failures": self.tensors,
        }


@dataclass
class Report:
    path: str
    checks: list[Check]
    #: the checkpoint as opened (None when it could not be): further checks reuse it
    checkpoint: Checkpoint | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "passed": self.passed,
            "checks": [c.as_dict() for c in self.checks],
        }


def verify_checkpoint(path: str | Path, against: str | Path | None = None) -> Report:
    """Run every check on ``path``; with ``against``, compare to the source checkpoint."""
    structure = Check("index <-> shards complete and consistent")
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as exc:
        structure.passed, structure.detail = False, str(exc)
        return Report(str(path), [structure])
    total = sum(t.nbytes for t in ckpt.tensors.values())
    structure.detail = f"{len(ckpt.shards)} shards, {len(ckpt.tensors)} tensors, {total} bytes"
    if ckpt.index is not None:
        declared = (ckpt.index.get("metadata") or {}).get("total_size")
        if declared is not None and declared != total:
            structure.fail("metadata.total_size", f"{declared} != {total} (sum of tensors)")
    pairs, checks = _scale_checks(ckpt)
    checks.insert(0, structure)
    _manifest_check(ckpt, structure)
    checks.append(_config_check(ckpt, pairs))
    checks.append(_pow2_check(ckpt, pairs))
    checks.append(_finite_check(ckpt, pairs))
    if against is not None:
        checks.extend(_against_checks(ckpt, pairs, open_checkpoint(against)))
    return Report(str(path), checks, ckpt)


def _manifest_check(ckpt: Checkpoint, check: Check) -> None:
    """With a ue8m0 manifest in the checkpoint, every shard it records must still have the size
    and CRC-32 it was written with (a flipped byte fails here even when the header still
    parses): failures of the structure ``check``."""
    path = ckpt.root / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return
    try:
        data = load_json(path, "the manifest")
    except CheckpointError as exc:
        check.fail(MANIFEST_NAME, exc.reason)
        return
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, dict):
        check.fail(MANIFEST_NAME, "not a ue8m0 manifest (no 'shards' object)")
        return
    for shard, record in shards.items():
        if not isinstance(record, dict):
            check.fail(shard, "malformed manifest record")
        elif shard not in ckpt.shards:
            if ckpt.index is not None:  # (a single file checked on its own: the others aside)
                check.fail(shard, "recorded in the manifest but not a shard of the checkpoint")
        elif ckpt.path(shard).stat().st_size != record.get("size"):
            check.fail(
                shard,
                f"{ckpt.path(shard).stat().st_size} bytes, manifest says {record.get('size')}",
            )
        elif (crc := file_checksum(ckpt.path(shard))) != record.get("crc32"):
            check.fail(
                shard, f"CRC-32 {crc}, manifest says {record.get('crc32')}: the bytes changed"
            )
    missing = [s for s in ckpt.shards if s not in shards and ckpt.index is not None]
    for shard in missing:
        check.fail(shard, "not recorded in the manifest")
    check.detail += f"; CRC-32s of the {len(shards)} shards in the manifest checked"


def _scale_checks(ckpt: Checkpoint) -> tuple[list[Fp8Weight], list[Check]]:
    shapes = Check("every FP8 weight has a scale of the right shape and dtype")
    orphans = Check("no orphan scales")
    found = pair_fp8_weights(ckpt)
    for problem in found.problems:
        shapes.fail(problem.tensor, problem.reason)
    pairs: list[Fp8Weight] = []
    for w in found.weights.values():
        if undeclared_block(w, found.declared):
            sshape = list(ckpt.tensors[w.scale].shape)
            wshape = list(ckpt.tensors[w.name].shape)
            shapes.fail(
                w.scale, f"shape {sshape} does not fit {wshape} with block {found.declared}"
            )
        else:
            pairs.append(w)
    for name in ckpt.tensors:
        if is_scale_name(name) and name not in found.scales:
            orphans.fail(name, "no FP8 weight uses it")
    shapes.detail = f"{len(pairs)} FP8 weights"
    return pairs, [shapes, orphans]


def _config_check(ckpt: Checkpoint, pairs: list[Fp8Weight]) -> Check:
    check = Check("config.json <-> tensors consistent")
    qc = (ckpt.config or {}).get("quantization_config")
    has_fp8 = any(t.dtype in FP8_TAGS for t in ckpt.tensors.values())
    if ckpt.config is None:
        check.detail = "no config.json"
        return check
    if has_fp8 and not isinstance(qc, dict):
        check.fail("config.json", "FP8 tensors but no quantization_config")
    elif not has_fp8 and qc is not None:
        check.fail("config.json", "quantization_config but no FP8 tensors")
    elif isinstance(qc, dict):
        check.detail = f"quant_method {qc.get('quant_method')}"
        fmt = qc.get("fmt")
        skip = [str(m) for m in qc.get("modules_to_not_convert") or qc.get("ignored_layers") or []]
        for pair in pairs:
            if fmt is not None and fmt != pair.fmt and not pair.packed:
                check.fail(pair.name, f"dtype is {pair.fmt} but config fmt is {fmt}")
            if module_of(pair.name) in skip:
                check.fail(pair.name, "FP8 but listed in modules_to_not_convert")
    return check


def stored_pieces(ckpt: Checkpoint, name: str) -> Iterator[np.ndarray]:
    """Tensor ``name`` of ``ckpt`` as stored, flat, in pieces of at most ``COPY_BYTES`` (a
    DeepSeek-V4.1 Engram table's scale alone is 3 GB of bytes, 12 GB decoded to float32)."""
    info = ckpt.tensors[name]
    step = max(COPY_BYTES // info.itemsize, 1) * info.itemsize
    with ckpt.open(ckpt.weight_map[name]) as f:
        for start, stop in copy_pieces(info.nbytes, step):
            yield f.read_bytes(name, start, stop).view(DTYPES[info.dtype])


def _scale_pieces(ckpt: Checkpoint, name: str) -> Iterator[np.ndarray]:
    """Scale ``name`` as float32 dequant multipliers, in pieces (:func:`stored_pieces`)."""
    tag = ckpt.tensors[name].dtype
    return (decode_scale(piece, tag) for piece in stored_pieces(ckpt, name))


def _pow2_check(ckpt: Checkpoint, pairs: list[Fp8Weight]) -> Check:
    qc = (ckpt.config or {}).get("quantization_config") or {}
    ue8m0 = isinstance(qc, dict) and qc.get("scale_fmt") == "ue8m0"
    check = Check("scale_fmt ue8m0 => every scale an exact power of two")
    if not ue8m0:
        check.detail = "not declared (skipped)"
        return check
    for pair in pairs:
        pieces = _scale_pieces(ckpt, pair.scale)
        bad = sum(int(np.count_nonzero(~is_power_of_two(piece))) for piece in pieces)
        if bad:
            check.fail(pair.scale, f"{bad} scales are not powers of two")
    check.detail = f"{len(pairs)} scale tensors"
    return check


def _finite_check(ckpt: Checkpoint, pairs: list[Fp8Weight]) -> Check:
    check = Check("no NaN/Inf in weights and scales")
    for pair in pairs:
        if not all(np.isfinite(piece).all() for piece in _scale_pieces(ckpt, pair.scale)):
            check.fail(pair.scale, "non-finite scale")
    for shard in ckpt.shards:
        with ckpt.open(shard) as f:
            for info in f.tensors.values():
                if info.dtype in FP8_TAGS:
                    finite = np.isfinite(decode_table(element_fmt(FMT_OF_TAG[info.dtype])))
                elif info.dtype not in FLOAT_TAGS or not info.nbytes:
                    continue
                else:
                    finite = None
                step = COPY_BYTES // info.itemsize * info.itemsize
                for start, stop in copy_pieces(info.nbytes, step):
                    raw = f.read_bytes(info.name, start, stop)
                    ok = (
                        finite[raw].all()
                        if finite is not None
                        else np.isfinite(raw.view(DTYPES[info.dtype]).astype(np.float32)).all()
                    )
                    if not ok:
                        check.fail(info.name, "NaN or Inf")
                        break
    return check


def _against_checks(ckpt: Checkpoint, pairs: list[Fp8Weight], src: Checkpoint) -> list[Check]:
    bound = Check("every dequantized block within the format's error bound of the source")
    kept = Check("high-precision tensors identical to the source")
    names = {p.name for p in pairs}
    worst = 0.0
    # an FP8 source is compared through its own dequantized (float32) values
    reader = Fp8Reader(src) if any(t.dtype in FP8_TAGS for t in src.tensors.values()) else None
    packed = [p for p in pairs if p.packed]
    for pair in pairs:
        if pair.packed:
            continue
        if pair.name not in src.tensors:
            bound.fail(pair.name, "not in the source")
            continue
        worst = max(worst, _compare_pair(ckpt, src, pair, bound, reader))
    for name, info in ckpt.tensors.items():
        if name in names or is_scale_name(name):
            continue
        sinfo = src.tensors.get(name)
        if sinfo is None or sinfo.dtype != info.dtype or sinfo.shape != info.shape:
            kept.fail(name, "missing from the source or different dtype/shape")
            continue
        with ckpt.open(ckpt.weight_map[name]) as a, src.open(src.weight_map[name]) as b:
            for start, stop in copy_pieces(info.nbytes):
                if not np.array_equal(
                    a.read_bytes(name, start, stop), b.read_bytes(name, start, stop)
                ):
                    kept.fail(name, "bytes differ")
                    break
    bound.detail = f"{len(pairs) - len(packed)} weights, worst error / bound = {worst:.3f}"
    if packed:
        bound.detail += f"; {len(packed)} packed FP4 weights not compared"
    return [bound, kept]


def _compare_pair(
    ckpt: Checkpoint, src: Checkpoint, pair: Fp8Weight, check: Check, reader: Fp8Reader | None
) -> float:
    """Largest elementwise |dequantized - source| / bound over the tensor."""
    fmt = element_fmt(pair.fmt)
    scale = read_scale(ckpt, pair.scale)
    scale = scale.reshape(-1, *scale.shape[-2:])
    info = ckpt.tensors[pair.name]
    if src.tensors[pair.name].shape != info.shape:
        check.fail(pair.name, "shape differs from the source")
        return 0.0
    br = pair.block[0]
    worst = 0.0
    with ckpt.open(ckpt.weight_map[pair.name]) as q, src.open(src.weight_map[pair.name]) as s:
        for lead, r0, r1 in slabs(info.shape, 4, br):
            codes = q.read_rows(pair.name, lead, r0, r1)
            sc = scale[lead, r0 // br : -(-r1 // br)]
            qt = QuantizedTensor.from_stored(codes.view(fmt.dtype), sc, fmt, pair.block)
            deq = dequantize(qt, np.float32)
            if reader is not None and pair.name in reader.weights:
                ref = reader.rows(s, pair.name, lead, r0, r1)
            else:
                ref = s.read_rows(pair.name, lead, r0, r1).astype(np.float32)
            worst = max(worst, _ratio(deq, ref, expand_scale(sc, ref.shape, pair.block), fmt))
    if worst > 1.0:
        check.fail(pair.name, f"error {worst:.3g}x the bound")
    return worst


def _ratio(deq: np.ndarray, ref: np.ndarray, s: np.ndarray, fmt: Any) -> float:
    """max |deq - ref| / bound: half an ulp of the element format at each value, plus the
    saturation excess above ``max * scale`` and a float32 rounding slack."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.abs(ref)
        v = a / s
        e = np.floor(np.log2(np.maximum(v, np.float32(fmt.smallest_normal))))
        half_ulp = np.exp2(e - fmt.mbits - 1) * s
        excess = np.maximum(a - np.float32(fmt.max) * s, 0)
        bound = (half_ulp + excess) * (1 + 2.0**-10) + a * 2.0**-20 + np.float32(1e-38)
        r = np.abs(deq - ref) / bound
    return float(np.nanmax(r)) if r.size else 0.0
