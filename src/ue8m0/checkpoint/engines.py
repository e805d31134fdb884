"""Will this checkpoint load where it is served? A loader-compatibility table, per engine.

Each rule reads facts of the checkpoint (headers, config, a few scale tensors) and says, for each
engine it concerns, that the engine **refuses** it (with the loader's own reason) or **silently
misreads** it; an engine no rule concerns **loads** it. The rules restate what the engines' own
loaders do, each citing where that was read or measured:

* vLLM: ``model_executor/layers/quantization/fp8.py`` (block-scaled FP8, ``weight_scale_inv``
  allocated float32 and ``copy_``-ed into), ``quantization/utils/quant_utils.py``
  ``is_layer_skipped`` (fused shards must agree: "Detected some but not all shards of ... are
  quantized"), ``models/deepseek_v2.py`` (``fused_qkv_a_proj``); DeepSeek-V4 ``expert_dtype``
  defaulting to ``fp4`` (vLLM PR 42970);
* SGLang: ``srt/layers/quantization/fp8.py`` (float32 ``weight_scale_inv``), ``models/deepseek_v2.py``
  (concatenates ``q_a_proj`` and ``kv_a_proj_with_mqa``);
* transformers 5.24, CPU: ``integrations/finegrained_fp8.py`` infers the block from the scale
  grid (a partial grid that divides the weight evenly is misread, one that does not raises);
  an MoE layer's experts load as one module (``FP8Experts`` on a GPU, its loading code run on
  CPU in the tests), with one scale tensor per projection; ``mxfp8`` reads ``weight_scale_inv``;
* DeepSeek's own code: ``inference/generate.py`` loads strictly; ``fp8_cast_bf16.py`` reads
  scales with a Triton kernel that cannot take F8_E8M0 and then writes the FP8 weight unconverted.

``ue8m0 verify DST --engine ...`` prints the table; the CI tests run vLLM's CPU build on ue8m0's
outputs for the rules they can exercise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ue8m0.checkpoint.architectures import EXPERT, architecture_of, experts_module_of, group_of
from ue8m0.checkpoint.pairs import Fp8Pairs, pair_fp8_weights, read_scale
from ue8m0.checkpoint.registry import MXFP8, expert_dtype, module_of
from ue8m0.checkpoint.safetensors import FLOAT_TAGS, FP8_TAGS
from ue8m0.checkpoint.source import Checkpoint

#: the engines the table covers, in the order it prints them
ENGINES = ("vllm", "sglang", "transformers", "deepseek")
LOADS, REFUSES, MISREADS = "loads", "refuses", "misreads"
#: at most this many tensors named per finding
MAX_NAMED = 5


@dataclass
class Finding:
    """One rule's verdict for one engine."""

    engine: str
    verdict: str
    reason: str
    tensors: list[str] = field(default_factory=list)


@dataclass
class Facts:
    ckpt: Checkpoint
    pairs: Fp8Pairs
    quant_method: object


Rule = Callable[[Facts], Iterator[Finding]]


def _named(names: list[str]) -> list[str]:
    return sorted(names)[:MAX_NAMED]


def split_fused_groups(f: Facts) -> Iterator[Finding]:
    """Members of one fused layer in different precisions."""
    arch = architecture_of(f.ckpt.config)
    groups: dict[tuple[str, object], dict[str, bool]] = {}
    for info in f.ckpt.tensors.values():
        if not info.name.endswith(".weight") or len(info.shape) < 2:
            continue
        found = group_of(arch, module_of(info.name))
        if found is not None and (info.dtype in FP8_TAGS or info.dtype in FLOAT_TAGS):
            groups.setdefault(found, {})[info.name] = info.dtype in FP8_TAGS
    split = [
        name
        for members in groups.values()
        if len(set(members.values())) > 1
        for name, fp8 in members.items()
        if not fp8
    ]
    if split:
        named = _named(split)
        yield Finding(
            "vllm",
            REFUSES,
            "Detected some but not all shards of a fused layer are quantized",
            named,
        )
        yield Finding(
            "sglang", REFUSES, "fused layers are concatenated: FP8 and BF16 parts cannot be", named
        )
        yield Finding(
            "deepseek",
            REFUSES,
            "generate.py loads strictly: an unquantized part has no scale",
            named,
        )


def partial_grids(f: Facts) -> Iterator[Finding]:
    """Scale grids that do not cover the weight with whole blocks of the declared size."""
    declared = f.pairs.declared or (128, 128)
    arch = architecture_of(f.ckpt.config)
    even, uneven, misplaced = [], [], []
    for w in f.pairs.weights.values():
        if w.packed:
            continue
        n, k = f.ckpt.tensors[w.name].shape[-2:]
        if n % declared[0] == 0 and k % declared[1] == 0:
            continue
        grid = f.ckpt.tensors[w.scale].shape[-2:]
        if n % grid[0] == 0 and k % grid[1] == 0:
            even.append(w.name)  # transformers infers n / grid rows: the wrong block
        else:
            uneven.append(w.name)
        found = group_of(arch, module_of(w.name))
        last = found is not None and module_of(w.name).rpartition(".")[2] == found[1].last
        if k % declared[1] or EXPERT.search(w.name) or (found is not None and not last):
            misplaced.append(w.name)
    if even:
        yield Finding(
            "transformers",
            MISREADS,
            "on CPU the block is inferred from the scale grid: a partial grid that divides the "
            "weight evenly is read with the wrong block",
            _named(even),
        )
    if uneven:
        yield Finding(
            "transformers",
            REFUSES,
            "on CPU a partial scale grid that does not divide raises",
            _named(uneven),
        )
    if misplaced:
        why = "a partial block only in the last part of a merged layer, never in MoE experts"
        yield Finding("vllm", REFUSES, why, _named(misplaced))
        yield Finding("sglang", REFUSES, why, _named(misplaced))


def byte_scales_as_numbers(f: Facts) -> Iterator[Finding]:
    """U8 scales where the layout's loaders allocate float32 scales and copy into them."""
    if f.quant_method != "fp8":
        return
    u8 = [w.name for w in f.pairs.weights.values() if w.scale_dtype == "U8" and not w.packed]
    if u8:
        why = "U8 scale bytes are copied into float32 scales as numbers (byte 127 -> 127.0)"
        for engine in ("vllm", "sglang"):
            yield Finding(engine, MISREADS, why, _named(u8))
        why = "weight_dequant promotes U8 scale bytes to float32 as numbers (byte 127 -> 127.0)"
        yield Finding("deepseek", MISREADS, why, _named(u8))


def e8m0_for_deepseek_v3(f: Facts) -> Iterator[Finding]:
    """F8_E8M0 scales where DeepSeek-V3's converter expects floats."""
    e8m0 = [w.name for w in f.pairs.weights.values() if w.scale_dtype == "F8_E8M0" and not w.packed]
    if e8m0 and not f.pairs.weights[e8m0[0]].scale.endswith(".scale"):
        yield Finding(
            "deepseek",
            MISREADS,
            "DeepSeek-V3's fp8_cast_bf16.py cannot read F8_E8M0 scales and writes the FP8 "
            "weight unconverted into its BF16 output",
            _named(e8m0),
        )


def stacked_fp8_for_deepseek(f: Facts) -> Iterator[Finding]:
    """FP8 weights stacked in 3-D (experts): DeepSeek's code takes 2-D weights only
    (``weight_dequant`` asserts ``x.dim() == 2``; measured with the real script under
    ``TRITON_INTERPRET=1``, docs/loaders.md)."""
    tensors = f.ckpt.tensors
    stacked = [w for w in f.pairs.weights if len(tensors[w].shape) == 3]
    if stacked:
        why = (
            "DeepSeek's fp8_cast_bf16.py stops with an AssertionError at a 3-D FP8 stack "
            "(weight_dequant takes 2-D weights; DeepSeek's checkpoints store experts 2-D)"
        )
        yield Finding("deepseek", REFUSES, why, _named(stacked))


def e5m2_as_e4m3(f: Facts) -> Iterator[Finding]:
    if f.quant_method != "fp8":
        return
    e5m2 = [n for n, t in f.ckpt.tensors.items() if t.dtype == "F8_E5M2"]
    if e5m2:
        why = "quant_method fp8 weights are loaded as e4m3 whatever fmt says"
        for engine in ("vllm", "sglang"):
            yield Finding(engine, MISREADS, why, _named(e5m2))


def mxfp8_scale_names(f: Facts) -> Iterator[Finding]:
    """Serialized MXFP8 under the scale name another engine reads. vLLM reads ``quant_method
    mxfp8`` with its ModelOpt MXFP8 loader (``quantization/modelopt.py``), whose layers take
    ``weight_scale`` (a ``weight_scale_inv`` is an unknown parameter). SGLang's FP8 method with
    ``use_mxfp8`` registers ``weight_scale_inv`` (``srt/layers/quantization/fp8.py``): a
    ``weight_scale`` of a fused layer raises a KeyError in its Llama ``load_weights``.
    transformers 5.24 (``mxfp8`` -> its fine-grained FP8 quantizer) loads ``weight_scale_inv``
    and drops ``weight_scale`` as an unexpected key, keeping its own initial scales: measured,
    logits off by about 2 on a tiny Llama."""
    if f.quant_method != MXFP8.quant_method:
        return
    weights = f.pairs.weights.values()
    inv = [w.name for w in weights if w.scale.endswith("_scale_inv")]
    plain = [w.name for w in weights if w.scale.endswith(".weight_scale")]
    if inv:
        why = "vLLM's MXFP8 loader (ModelOpt) takes weight_scale: weight_scale_inv is unknown"
        yield Finding("vllm", REFUSES, why, _named(inv))
    if plain:
        why = "SGLang's MXFP8 layers take weight_scale_inv: weight_scale is not a parameter"
        yield Finding("sglang", REFUSES, why, _named(plain))
        why = "transformers reads MXFP8 scales as weight_scale_inv and drops weight_scale"
        yield Finding("transformers", MISREADS, why, _named(plain))


def mixed_expert_layers(f: Facts) -> Iterator[Finding]:
    """MoE layers transformers v5 cannot load as one fused-experts module (measured in
    ``tests/test_transformers_fused_experts.py``): it merges ``....experts.<i>.<proj>`` into one
    module, ``FP8Experts`` with one scale tensor per projection, unless the skip list names
    ``....experts`` itself (a per-expert entry never matches a module). vLLM builds one
    ``FusedMoE`` per layer too: skip entries for some experts make it skip the whole layer
    (its exact match finds ``<layer>.experts`` inside them), and the other experts' scales
    then have no parameter (measured in ``tests/test_vllm_deepseek.py``)."""
    if f.quant_method not in ("fp8", MXFP8.quant_method):
        return
    qc = (f.ckpt.config or {}).get("quantization_config")
    listed = qc if isinstance(qc, dict) else {}
    skip = {str(m) for m in (listed.get("modules_to_not_convert") or [])}  # transformers'
    vllm_skip = skip | {str(m) for m in (listed.get("ignored_layers") or [])}
    layers: dict[str, dict[str, bool]] = {}
    for name, info in f.ckpt.tensors.items():
        layer = experts_module_of(name, info.shape)
        if layer is not None and (info.dtype in FP8_TAGS or info.dtype in FLOAT_TAGS):
            layers.setdefault(layer, {})[name] = info.dtype in FP8_TAGS
    uneven, misread = [], []
    for layer, members in layers.items():
        by_proj: dict[str, set[bool]] = {}
        for name, is_fp8 in members.items():
            by_proj.setdefault(module_of(name).rpartition(".")[2], set()).add(is_fp8)
        fp8 = set(members.values())
        if any(len(v) > 1 for v in by_proj.values()) and layer not in skip:
            uneven.append(layer)  # some experts of one projection without scales
        elif fp8 == {True, False} or (fp8 == {True}) == (layer in skip):
            misread.append(layer)
    if uneven:
        why = (
            "an MoE layer's experts are one module: BF16 experts beside FP8 ones leave fewer "
            "scales than experts ('Fp8Dequantize: weight/scale count mismatch' on CPU)"
        )
        yield Finding("transformers", REFUSES, why, _named(uneven))
        per_expert = [m for m in uneven if any(e.startswith(m + ".") for e in vllm_skip)]
        if per_expert:
            why = (
                "skip entries for some experts skip the layer's whole FusedMoE: the FP8 "
                "experts' scales have no parameter (KeyError ...w2_weight_scale_inv)"
            )
            yield Finding("vllm", REFUSES, why, _named(per_expert))
    if misread:
        why = (
            "an MoE layer's experts are one module, FP8Experts on a GPU unless the skip list "
            "names <layer>.experts: BF16 experts are cast to e4m3 without scales (or, named, FP8 "
            "ones are read without theirs)"
        )
        yield Finding("transformers", MISREADS, why, _named(misread))


def missing_expert_dtype(f: Facts) -> Iterator[Finding]:
    """DeepSeek-V4 names (``.scale``) without ``expert_dtype``: older vLLM assumes fp4."""
    v4 = any(w.scale.endswith(".scale") for w in f.pairs.weights.values())
    if v4 and expert_dtype(f.ckpt.config) is None:
        yield Finding(
            "vllm",
            MISREADS,
            "a DeepSeek-V4 checkpoint without expert_dtype is read as FP4 experts (the default)",
        )


def exponent_bytes_as_values(f: Facts) -> Iterator[Finding]:
    """Float scales whose values look like biased exponents copied as numbers (a converter
    that already misread U8/E8M0 bytes): every value an integer in [64, 192]."""
    suspect = []
    for w in list(f.pairs.weights.values())[:64]:  # a sample of the scale tensors
        if w.scale_dtype not in FLOAT_TAGS:
            continue
        s = read_scale(f.ckpt, w.scale)
        if s.size and np.all((s == np.round(s)) & (s >= 64) & (s <= 192)):
            suspect.append(w.name)
    if suspect:
        why = "scale values look like exponent bytes stored as numbers (e.g. 120.0 for 2**-7)"
        for engine in ENGINES:
            yield Finding(engine, MISREADS, why, _named(suspect))


#: every rule, in the order the table lists their findings
RULES: tuple[Rule, ...] = (
    split_fused_groups,
    partial_grids,
    byte_scales_as_numbers,
    e8m0_for_deepseek_v3,
    stacked_fp8_for_deepseek,
    e5m2_as_e4m3,
    mxfp8_scale_names,
    mixed_expert_layers,
    missing_expert_dtype,
    exponent_bytes_as_values,
)


def engine_table(
    ckpt: Checkpoint, engines: tuple[str, ...] = ENGINES
) -> dict[str, dict[str, object]]:
    """Per engine: its verdict (the worst of its findings: misreads > refuses > loads) and the
    findings."""
    qc = (ckpt.config or {}).get("quantization_config")
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    facts = Facts(ckpt, pair_fp8_weights(ckpt), method)
    found: dict[str, list[Finding]] = {e: [] for e in engines}
    for rule in RULES:
        for finding in rule(facts):
            if finding.engine in found:
                found[finding.engine].append(finding)
    order = {LOADS: 0, REFUSES: 1, MISREADS: 2}
    table: dict[str, dict[str, object]] = {}
    for engine, findings in found.items():
        verdict = max((f.verdict for f in findings), key=order.__getitem__, default=LOADS)
        table[engine] = {
            "verdict": verdict,
            "findings": [
                {"verdict": f.verdict, "reason": f.reason, "tensors": f.tensors} for f in findings
            ],
        }
    return table


__all__ = ["ENGINES", "RULES", "engine_table"]
