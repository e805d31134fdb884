"""The registry of on-disk FP8 checkpoint layouts: one frozen :class:`Layout` per layout.

A layout says how a weight's scale is named, which scale dtypes and element formats it stores,
its block, how its ``quantization_config`` is written and recognised, what it keeps in high
precision and how elements are stored. Commands look a layout up by name (:func:`get_layout`);
``inspect`` and ``verify`` detect one by asking each entry (:func:`detect_layout`). Adding a
layout is one entry here plus its tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ue8m0.checkpoint.scales import SCALE_DTYPES
from ue8m0.errors import OptionError
from ue8m0.formats import ElementFormat, element_format

#: ``fmt`` option -> (element format name, safetensors tag)
FMTS: dict[str, tuple[str, str]] = {
    "e4m3": ("float8_e4m3fn", "F8_E4M3"),
    "e5m2": ("float8_e5m2", "F8_E5M2"),
}
#: safetensors tag of an FP8 weight -> ``fmt`` name
FMT_OF_TAG = {tag: name for name, (_, tag) in FMTS.items()}

#: the element format name of DeepSeek-V4's packed FP4 experts (two E2M1 codes per I8 byte)
FP4 = "e2m1"
#: safetensors tags packed FP4 weights are stored under
FP4_TAGS = ("I8", "U8")

#: the serving engines a layout can be written for (``--engine``)
SERVING_ENGINES = ("vllm", "sglang", "transformers")

#: the MX group: one scale per 32 elements of a row
MX_BLOCK = (1, 32)
#: the DeepSeek / DeepGEMM weight block
DEFAULT_BLOCK = (128, 128)

#: (pattern, reason) of tensors kept in high precision by default (slime/miles/DeepSeek list)
DEFAULT_KEEP: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"embed|wte\.|wpe\.", re.I), "embedding"),
    (re.compile(r"(^|\.)lm_head\.|shared_head\.head\.|(^|\.)output\.weight$"), "output head"),
    (re.compile(r"norm|(^|\.)ln_", re.I), "norm"),
    (
        re.compile(r"(^|\.)(mlp|ffn|block_sparse_moe)\.gate\.|router|e_score_correction_bias"),
        "MoE router",
    ),
    (re.compile(r"eh_proj|weights_proj"), "kept by DeepSeek converters"),
)


def element_fmt(name: str) -> ElementFormat:
    """The element format of a ``fmt`` option name."""
    if name not in FMTS:
        raise OptionError("fmt", f"unknown format {name!r}; known: {', '.join(FMTS)}")
    return element_format(FMTS[name][0])


def expert_dtype(config: dict[str, Any] | None) -> object:
    """DeepSeek-V4's ``expert_dtype`` (``fp4`` / ``fp8``) where its loaders look: the top level,
    ``quantization_config`` (V4.1, transformers) or a nested ``text_config``; None if absent."""
    for level in (config, (config or {}).get("text_config")):
        if not isinstance(level, dict):
            continue
        qc = level.get("quantization_config")
        for where in (level, qc if isinstance(qc, dict) else {}):
            if "expert_dtype" in where:
                return where["expert_dtype"]
    return None


def without_quantization(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as a plain high-precision model declares it: no ``quantization_config`` and
    no ``expert_dtype``, at the top level or in a nested ``text_config``."""
    drop = ("quantization_config", "expert_dtype")
    out = {k: v for k, v in config.items() if k not in drop}
    text = out.get("text_config")
    if isinstance(text, dict):
        out["text_config"] = {k: v for k, v in text.items() if k not in drop}
    return out


def module_of(name: str) -> str:
    """``a.b.weight`` -> ``a.b``."""
    return name.rsplit(".", 1)[0] if "." in name else name


ConfigWriter = Callable[["Layout", str, tuple[int, int], bool, list[str]], dict[str, Any]]


def _fp8_config(
    layout: Layout, fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
) -> dict[str, Any]:
    """The DeepSeek-V3.1 ``quantization_config`` (``quant_method fp8``) that transformers, vLLM
    and SGLang read; MXFP8 is the same shape with ``quant_method mxfp8`` and 1x32 blocks (vLLM
    reads it as MiniMax-style ModelOpt MXFP8, SGLang and transformers as their FP8 method with
    ``use_mxfp8``; miles' ``convert_hf_to_mxfp8`` writes it)."""
    config: dict[str, Any] = {
        "quant_method": layout.quant_method,
        "fmt": fmt,
        "activation_scheme": "dynamic",
        "weight_block_size": [block[0], block[1]],
    }
    if ue8m0:
        config["scale_fmt"] = "ue8m0"
    # the skip list under both names: vLLM reads ignored_layers (else modules_to_not_convert),
    # older vLLM and SGLang only ignored_layers, transformers modules_to_not_convert
    config["modules_to_not_convert"] = not_converted
    config["ignored_layers"] = list(not_converted)
    return config


def _ct_config(
    layout: Layout, fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
) -> dict[str, Any]:
    """The compressed-tensors ``float-quantized`` block config (llm-compressor's FP8_BLOCK):
    one group targeting ``Linear``, weights ``strategy: block`` with ``block_structure``, dynamic
    per-group-of-128 activations; ``ignore`` lists the modules kept in high precision."""
    return {
        "quant_method": layout.quant_method,
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": "float-quantized",
                "weights": {
                    "num_bits": 8,
                    "type": "float",
                    "strategy": "block",
                    "block_structure": [block[0], block[1]],
                    "symmetric": True,
                    "dynamic": False,
                },
                "input_activations": {
                    "num_bits": 8,
                    "type": "float",
                    "strategy": "group",
                    "group_size": 128,
                    "symmetric": True,
                    "dynamic": True,
                },
            }
        },
        "ignore": not_converted,
    }


def _v4_config(
    layout: Layout, fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
) -> dict[str, Any]:
    """DeepSeek-V4's ``quantization_config`` as its releases write it (no skip list: what stays
    in high precision follows from the tensors' dtypes); ``expert_dtype`` is set beside it by
    the planner."""
    config = _fp8_config(layout, fmt, block, ue8m0, not_converted)
    del config["modules_to_not_convert"], config["ignored_layers"]
    return config


#: what DeepSeek-V4 releases keep in high precision (from their tensor dtypes): besides the
#: common list, the output head ``head.weight`` and the attention compressors (BF16); V4.1
#: (and V4-Flash-Vision-Exp) also the vision tower and its aligner, the indexer's key
#: projection ``attn.indexer.wk`` and DSpark's confidence head (BF16 / F32)
V4_KEEP: tuple[tuple[re.Pattern[str], str], ...] = (
    *DEFAULT_KEEP,
    (re.compile(r"(^|\.)head\.weight$"), "output head"),
    (re.compile(r"\.compressor\."), "kept by DeepSeek-V4 (BF16 compressor)"),
    (re.compile(r"^(vision|aligner)\."), "vision tower (BF16 in DeepSeek-V4.1)"),
    (re.compile(r"\.indexer\.wk\.|\.confidence_head\."), "kept by DeepSeek-V4.1 (BF16/F32)"),
)


@dataclass(frozen=True)
class Layout:
    """One on-disk layout of FP8 block-scaled weights."""

    #: the name commands take (``--format``, ``--to``)
    name: str
    #: what ``inspect`` calls it
    title: str
    #: ``quantization_config.quant_method``
    quant_method: str
    #: a weight ``M.weight``'s scale is ``M.weight`` + suffix, or ``M`` + suffix when
    #: :attr:`scale_of_module`
    scale_suffix: str
    scale_of_module: bool = False
    #: ``scale_dtype`` names it can store; the first is its default
    scale_dtypes: tuple[str, ...] = ("f32",)
    #: element formats (``fmt`` names) it can store
    fmts: tuple[str, ...] = tuple(FMTS)
    #: its default block; with :attr:`fixed_block` the only one
    block: tuple[int, int] = DEFAULT_BLOCK
    fixed_block: bool = False
    #: its scales must be powers of two (no ``fp32`` rule)
    power_of_two: bool = False
    #: ``requantize --scale-dtype auto`` keeps a source's stored scale dtype when it can
    keeps_source_scale_dtype: bool = False
    #: recognised by its ``quant_method`` alone (the method names no other layout)
    method_is_unique: bool = False
    #: converters write it (read-only layouts are only read, inspected and verified)
    writable: bool = True
    #: how ``quantization_config`` is written
    config_writer: ConfigWriter = _fp8_config
    #: tensors kept in high precision by default: (pattern, reason)
    keep: tuple[tuple[re.Pattern[str], str], ...] = DEFAULT_KEEP
    #: how elements are stored
    elements: str = "one FP8 code per byte (F8_E4M3 / F8_E5M2)"
    #: it may hold packed FP4 weights (two E2M1 codes per byte, a scale per 32 inputs) where
    #: its config says ``expert_dtype: fp4``: the routed experts these names match
    fp4_experts: re.Pattern[str] | None = None
    notes: tuple[str, ...] = field(default=())
    #: ``(option, value, why)``: what its serving loaders (vLLM, SGLang) misread; refused
    #: unless the output is declared not for serving
    misreads: tuple[tuple[str, str, str], ...] = ()
    #: the serving engines that read it (``--engine`` picks among a layout's variants)
    engines: tuple[str, ...] = SERVING_ENGINES
    #: the layout this is a variant of, for other engines (not a ``--format`` name itself)
    variant_of: str | None = None
    #: recognised only under its own ``quant_method`` (variants that share one tell apart by
    #: their scale names)
    needs_method: bool = False

    @property
    def default_scale_dtype(self) -> str:
        return self.scale_dtypes[0]

    def scale_name(self, weight: str) -> str:
        """The name this layout gives ``weight``'s scale."""
        if self.scale_of_module:
            return module_of(weight) + self.scale_suffix if weight.endswith(".weight") else ""
        return weight + self.scale_suffix

    def is_scale_name(self, name: str) -> bool:
        return name.endswith((".weight" if not self.scale_of_module else "") + self.scale_suffix)

    def is_fp4_expert(self, name: str) -> bool:
        """Whether ``name`` is a routed-expert weight this layout may store as packed FP4."""
        return self.fp4_experts is not None and bool(self.fp4_experts.search(name))

    def keep_reason(self, name: str) -> str | None:
        """Why ``name`` stays high precision by default in this layout, or None."""
        for pattern, reason in self.keep:
            if pattern.search(name):
                return reason
        return None

    def quant_config(
        self, fmt: str, block: tuple[int, int], ue8m0: bool, not_converted: list[str]
    ) -> dict[str, Any]:
        """The ``quantization_config`` this layout writes into ``config.json``."""
        return self.config_writer(self, fmt, block, ue8m0, not_converted)

    def misread(self, option: str, value: str) -> str | None:
        """Why the serving loaders of this layout misread ``option=value`` (None: they don't)."""
        return next((why for o, v, why in self.misreads if (o, v) == (option, value)), None)

    def check(
        self,
        fmt: str,
        scale_dtype: str,
        block: tuple[int, int],
        power_of_two: bool,
        serving: bool = True,
    ) -> None:
        """Refuse options this layout cannot store, and (for ``serving`` outputs) options its
        loaders would silently misread."""
        if not self.writable:
            raise OptionError("layout", f"{self.name} is read, not written, by ue8m0")
        if fmt not in self.fmts:
            raise OptionError("fmt", f"{self.title} stores {'/'.join(self.fmts)} only, not {fmt}")
        if scale_dtype not in SCALE_DTYPES:
            raise OptionError("scale_dtype", f"unknown {scale_dtype!r}")
        if scale_dtype not in self.scale_dtypes:
            raise OptionError(
                "scale_dtype",
                f"{self.title} stores {'/'.join(self.scale_dtypes)} scales, not {scale_dtype}",
            )
        if self.fixed_block and block != self.block:
            raise OptionError(
                "block",
                f"{self.title} groups are {self.block[0]}x{self.block[1]}, "
                f"not {block[0]}x{block[1]}",
            )
        if self.power_of_two and not power_of_two:
            raise OptionError("scale_rule", f"{self.title} scales are powers of two: not fp32")
        for option, value in (("fmt", fmt), ("scale_dtype", scale_dtype)):
            why = self.misread(option, value) if serving else None
            if why is not None:
                raise OptionError(option, why, "not_for_serving")

    def recognises(
        self, quant_method: object, scale_names: Iterable[str], blocks: set[tuple[int, int]]
    ) -> bool:
        """Whether a checkpoint with this config method, these scale tensors and blocks is in
        this layout."""
        if self.fixed_block and blocks != {self.block}:
            return False
        if self.needs_method and quant_method != self.quant_method:
            return False
        if self.method_is_unique and quant_method == self.quant_method:
            return True
        return any(self.is_scale_name(n) for n in scale_names)


DEEPSEEK = Layout(
    name="deepseek",
    title="DeepSeek FP8 block (weight_scale_inv)",
    quant_method="fp8",
    scale_suffix="_scale_inv",
    scale_dtypes=("f32", "e8m0", "u8"),
    keeps_source_scale_dtype=True,
    misreads=(
        (
            "scale_dtype",
            "u8",
            "vLLM and SGLang copy U8 scale bytes into float32 scales as numbers (byte 127 -> "
            "127.0: garbage output); e8m0 stores the same bytes as F8_E8M0, read as powers of two",
        ),
        (
            "fmt",
            "e5m2",
            "vLLM and SGLang ignore fmt and load quant_method fp8 weights as e4m3 (e5m2 bytes "
            "misread, most elements clamped to 448)",
        ),
    ),
)
COMPRESSED_TENSORS = Layout(
    name="compressed-tensors",
    title="compressed-tensors FP8 block",
    quant_method="compressed-tensors",
    scale_suffix="_scale",
    fmts=("e4m3",),
    method_is_unique=True,
    config_writer=_ct_config,
)
MXFP8 = Layout(
    name="mxfp8",
    title="MXFP8 for vLLM (1x32 groups, weight_scale)",
    quant_method="mxfp8",
    scale_suffix="_scale",
    scale_dtypes=("u8",),
    block=MX_BLOCK,
    fixed_block=True,
    power_of_two=True,
    needs_method=True,
    engines=("vllm",),
    notes=(
        "vLLM reads quant_method mxfp8 with its ModelOpt MXFP8 loader: U8 weight_scale, "
        "exclusions from ignored_layers",
    ),
)
MXFP8_SGLANG = Layout(
    name="mxfp8-sglang",
    title="MXFP8 for SGLang and transformers (1x32 groups, weight_scale_inv)",
    quant_method="mxfp8",
    scale_suffix="_scale_inv",
    scale_dtypes=("u8",),
    block=MX_BLOCK,
    fixed_block=True,
    power_of_two=True,
    needs_method=True,
    engines=("sglang", "transformers"),
    variant_of=MXFP8.name,
    notes=(
        "SGLang's and transformers' FP8 methods read quant_method mxfp8 with U8 "
        "weight_scale_inv; vLLM refuses the name",
    ),
)
DEEPSEEK_V4 = Layout(
    name="deepseek-v4",
    title="DeepSeek-V4 FP8 block (.scale)",
    quant_method="fp8",
    scale_suffix=".scale",
    scale_of_module=True,
    scale_dtypes=("e8m0", "f32"),
    fmts=("e4m3",),
    power_of_two=True,
    config_writer=_v4_config,
    keep=V4_KEEP,
    elements="FP8 codes one per byte; routed experts under expert_dtype fp4: two E2M1 codes per "
    "I8 byte (element 2i in the low nibble), one F8_E8M0 scale per 32 inputs",
    fp4_experts=re.compile(r"(^|\.)ffn\.experts\.\d+\.w[123]\.weight$"),
)

#: every layout, in the order detection asks them (the most specific first)
LAYOUTS: tuple[Layout, ...] = (MXFP8, MXFP8_SGLANG, COMPRESSED_TENSORS, DEEPSEEK_V4, DEEPSEEK)
_BY_NAME = {layout.name: layout for layout in LAYOUTS}


def get_layout(name: str | Layout) -> Layout:
    """The layout called ``name`` (or the layout itself)."""
    if isinstance(name, Layout):
        return name
    found = _BY_NAME.get(name)
    if found is None:
        raise OptionError("layout", f"unknown {name!r}; known: {', '.join(layout_names())}")
    return found


def layout_for(name: str | Layout, engine: str | None) -> Layout:
    """The variant of layout ``name`` that ``engine`` reads (``name`` itself for None)."""
    base = get_layout(name)
    if engine is None:
        return base
    if engine not in SERVING_ENGINES:
        raise OptionError("engine", f"unknown {engine!r}; known: {', '.join(SERVING_ENGINES)}")
    family = [lay for lay in LAYOUTS if base.name in (lay.name, lay.variant_of)]
    found = next((lay for lay in family if engine in lay.engines), None)
    if found is None:
        raise OptionError("engine", f"{engine} reads no form of {base.title}")
    return found


def layout_names(
    *, writable: bool = True, fixed_block: bool | None = None, fp4_experts: bool = True
) -> list[str]:
    """Layout names for option choices: the writable ones (not engine variants), optionally by
    fixed block and without the layouts that hold FP4 experts."""
    return [
        layout.name
        for layout in sorted(LAYOUTS, key=lambda lay: (lay is not DEEPSEEK, lay.name))
        if layout.variant_of is None
        and (layout.writable or not writable)
        and (fixed_block is None or layout.fixed_block == fixed_block)
        and (fp4_experts or layout.fp4_experts is None)
    ]


def scale_candidates(weight: str) -> list[str]:
    """Names ``weight``'s scale may have, in the order readers look for them."""
    out: list[str] = []
    for layout in (DEEPSEEK, COMPRESSED_TENSORS, DEEPSEEK_V4):
        name = layout.scale_name(weight)
        if name and name not in out:
            out.append(name)
    return out


def is_scale_name(name: str) -> bool:
    """Whether ``name`` is named like a scale in some layout."""
    return any(layout.is_scale_name(name) for layout in LAYOUTS)


def detect_layout(
    quant_method: object, scale_names: Iterable[str], blocks: set[tuple[int, int]]
) -> Layout | None:
    """The first layout that recognises a checkpoint (None when none does)."""
    names = list(scale_names)
    return next((lay for lay in LAYOUTS if lay.recognises(quant_method, names, blocks)), None)
