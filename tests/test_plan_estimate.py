"""Chip database, formats and roofline estimates: by-hand checks and invariants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ue8m0.plan.calibrate import calibration_points
from ue8m0.plan.chips import NUMBERS, Chip, Fp8Math, builtin_db, load_db
from ue8m0.plan.errors import PlanError
from ue8m0.plan.estimate import Workload, estimate, plan, weight_bytes
from ue8m0.plan.models import Role
from ue8m0.plan.precision import FORMATS, Compute, compute_path, get_format
from ue8m0.plan.presets import load_model

ISSUE_CHIPS = [
    "h20",
    "h20-141gb",
    "h100",
    "h800",
    "h200",
    "a100",
    "b200",
    "b300",
    "gb200",
    "gb300",
    "l20",
    "rtx4090",
    "mi300x",
    "mi325x",
    "mi355x",
    "ascend910b",
    "ascend910c",
    "ascend950pr",
    "ascend950dt",
    "mlu370",
    "mlu590",
    "k100-ai",
    "bw200",
    "s4000",
    "s5000",
    "c500",
    "c550",
    "br100",
    "br104",
    "tpu-v5e",
    "tpu-v5p",
    "tpu-v6e",
]
DB = builtin_db()


# ------------------------------------------------------------------------ chip database
def test_database_has_the_chips_of_the_issues() -> None:
    assert [c.key for c in DB.chips] == ISSUE_CHIPS
    names = [n for c in DB.chips for n in (c.key, *c.aliases)]
    assert len(names) == len(set(names)), "a key or alias names two chips"


def test_every_number_has_a_resolvable_source() -> None:
    for chip in DB.chips:
        fields = chip.sourced_fields()
        assert {"fp8_math", "block_scale_math"} <= set(fields)
        for name, sourced in fields.items():
            assert sourced.source_keys, f"{chip.key}.{name} has no source"
            for key in sourced.source_keys:
                assert key in DB.sources, f"{chip.key}.{name}: source {key!r} not in [sources]"


def test_units_are_dense_decimal_peaks() -> None:
    h100 = DB.get("H100")
    assert h100.number("bf16_tflops") == 989  # dense, not the 1979 sparse figure
    assert h100.ridge("bf16_tflops") == pytest.approx(989 / 3.35)
    h20 = DB.get("h20")
    assert h20.number("bf16_tflops") / h100.number("bf16_tflops") == pytest.approx(0.15, abs=0.01)
    assert DB.get("c550").number("mem_gb") is None  # unknown stays unknown


def test_lookup_is_case_insensitive_and_unknown_names_fail() -> None:
    assert DB.get("H20").key == "h20"
    assert DB.get("910C").key == "ascend910c"
    assert [c.key for c in DB.select(["h20,H200", "h20"])] == ["h20", "h200"]
    assert len(DB.select(["all"])) == len(ISSUE_CHIPS)
    with pytest.raises(PlanError, match="unknown chip 'v100'"):
        DB.get("v100")


def test_user_chip_file_adds_and_overrides(tmp_path: Path) -> None:
    user = {
        "sources": {"ME": "my measurement"},
        "chip": [
            {
                "key": "H20",
                "name": "H20 derated",
                "vendor": "NVIDIA",
                "fp8_math": {"value": "ocp", "src": "ME", "conf": "high"},
                "block_scale_math": {"value": "none", "src": "ME"},
                "bf16_tflops": {"value": 100, "src": "ME"},
                "mem_gb": {"value": 96, "src": "ME"},
                "mem_bw_tbs": {"value": 3.0, "src": "ME"},
            },
        ],
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(user))
    db = load_db([path])
    assert len(db.chips) == len(ISSUE_CHIPS)
    assert db.get("h20").number("mem_bw_tbs") == 3.0
    assert db.get("h20").number("fp8_tflops") is None
    user["chip"][0]["mem_gb"] = {"value": 96}
    path.write_text(json.dumps(user))
    with pytest.raises(PlanError, match="needs a source"):
        load_db([path])
    toml = tmp_path / "bad.toml"
    toml.write_text('[[chip]]\nkey = "x"\nfp8_math = { value = "maybe", src = "ME" }\n')
    with pytest.raises(PlanError, match="not one of"):
        load_db([toml])


# ------------------------------------------------------------------------ formats
def test_weight_bytes_with_scale_overhead() -> None:
    fp8, mxfp4 = get_format("fp8"), get_format("MXFP4")
    assert fp8.weight_bytes(7168, 2048) == 7168 * 2048 + 56 * 16
    assert fp8.weight_bytes(576, 7168) == 576 * 7168 + 5 * 56  # partial blocks round up
    assert mxfp4.weight_bytes(4096, 4096) == 4096 * 4096 // 2 + 4096 * 128
    assert fp8.scale_overhead == pytest.approx(1 / 16384)
    assert get_format("mxfp8").scale_overhead == pytest.approx(1 / 32)
    with pytest.raises(PlanError, match="unknown format"):
        get_format("fp6")


def test_model_weight_bytes_keep_embedding_and_head_in_bf16() -> None:
    m = load_model("llama-3.1-8b")
    fp8 = FORMATS["fp8"]
    quantized = sum(w.params for w in m.weights if w.role.quantizable)
    other = m.total_params - quantized
    by_hand = (
        sum(fp8.weight_bytes(w.rows, w.cols) * w.count for w in m.weights if w.role.quantizable)
        + 2 * other
    )
    assert weight_bytes(m, fp8) == by_hand
    assert weight_bytes(m, FORMATS["bf16"]) == 2 * m.total_params
    assert 2 * 128256 * 4096 <= other < 2 * 128256 * 4096 + 1e6


# ------------------------------------------------------------------------ compute paths
@pytest.mark.parametrize("chip", [c for c in DB.chips if not c.fp8.native], ids=lambda c: c.key)
def test_no_fp8_math_never_gets_an_fp8_speedup(chip: Chip) -> None:
    for fmt in ("fp8", "mxfp8", "mxfp4"):
        path = compute_path(chip, FORMATS[fmt])
        assert path.compute is Compute.BF16 and path.weight_only
        assert path.peak_tflops == chip.number("bf16_tflops")
    if chip.number("mem_gb") and chip.number("mem_bw_tbs") and chip.number("bf16_tflops"):
        model = load_model("llama-3.1-8b")
        wl = Workload(batch=1, context=4096, num_chips=8)
        bf16, fp8 = (estimate(model, chip, FORMATS[f], wl) for f in ("bf16", "fp8"))
        assert fp8.prefill_s == pytest.approx(bf16.prefill_s, rel=0.01)  # compute-bound: same
        assert fp8.decode_tok_s > 1.5 * bf16.decode_tok_s  # bandwidth-bound: fewer bytes


def test_fp8_paths_and_flags() -> None:
    assert DB.get("mi300x").fp8 is Fp8Math.FNUZ
    mi300 = compute_path(DB.get("mi300x"), FORMATS["fp8"])
    assert mi300.peak_tflops == 2614.9 and any("FNUZ" in f for f in mi300.flags)
    b200 = compute_path(DB.get("b200"), FORMATS["mxfp4"])
    assert b200.compute is Compute.FP4 and b200.peak_tflops == 9000
    h100 = compute_path(DB.get("h100"), FORMATS["mxfp4"])
    assert h100.compute is Compute.FP8 and h100.weight_only
    assert any("software" in f for f in compute_path(DB.get("h20"), FORMATS["fp8"]).flags)


# ------------------------------------------------------------------------ estimates
def test_decode_estimate_by_hand_llama_8b_on_h100() -> None:
    m, chip = load_model("llama-3.1-8b"), DB.get("h100")
    e = estimate(m, chip, FORMATS["bf16"], Workload(batch=4, context=1024, num_chips=1))
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336
    dense_params = 32 * layer + 128256 * 4096  # layers + lm_head (embedding is a lookup)
    dense_bytes = 2 * (dense_params + 32 * 2 * 4096 + 4096)  # + norms
    dense_s = max(2 * dense_params * 4 / 989e12, dense_bytes / 3.35e12)
    attn_flops = 4 * (4 * 32 * 32 * 128 * 1024)
    attn_bytes = 4 * 1024 * 2 * 32 * 8 * 128 * 2
    attn_s = max(attn_flops / 989e12, attn_bytes / 3.35e12)
    assert e.decode_tok_s == pytest.approx(4 / (dense_s + attn_s), rel=1e-9)
    assert e.decode_tok_s_per_chip == e.decode_tok_s
    assert 750 < e.decode_tok_s < 900  # ~16 GB per step at 3.35 TB/s, 4 tokens per step
    assert e.decode.bottleneck == "dense:memory"


def test_moe_decode_reads_only_touched_experts() -> None:
    m, chip = load_model("deepseek-v3.1"), DB.get("h20")
    fp8 = FORMATS["fp8"]
    e1 = estimate(m, chip, fp8, Workload(batch=1, context=1, num_chips=8))
    experts = {op.name: op for op in e1.decode.ops}["experts"]
    assert experts.bytes == pytest.approx(weight_bytes(m, fp8, Role.EXPERT) * 8 / 256)
    assert experts.flops == pytest.approx(2 * m.expert_params * 8 / 256)
    e64 = estimate(m, chip, fp8, Workload(batch=64, context=1, num_chips=8))
    ratio = e64.decode_tok_s / e1.decode_tok_s
    assert 1 < ratio < 64  # batching helps, but 64 tokens touch ~223 of 256 experts


def test_fit_and_min_chips_by_hand() -> None:
    m, chip = load_model("deepseek-v3.1"), DB.get("h20")
    wl = Workload(batch=64, context=8192, num_chips=8, reserve=0.1)
    e = estimate(m, chip, FORMATS["fp8"], wl)
    need = weight_bytes(m, FORMATS["fp8"]) + 64 * 8192 * 70272
    assert e.min_chips == math.ceil(need / (96e9 * 0.9)) == 9
    assert e.fits is False and e.decode is None and e.prefill is None
    auto = estimate(m, chip, FORMATS["fp8"], Workload(batch=64, context=8192))
    assert auto.num_chips == 9 and auto.fits and auto.decode_tok_s_per_chip > 0
    assert estimate(m, chip, FORMATS["bf16"], Workload(num_chips=8)).min_chips == 16


def test_prefill_is_compute_bound_and_fp8_doubles_it_on_fp8_chips() -> None:
    m = load_model("deepseek-v3.1")
    wl = Workload(batch=1, context=8192, num_chips=16)
    for key in ("h20", "b200"):
        bf16, fp8 = (estimate(m, DB.get(key), FORMATS[f], wl) for f in ("bf16", "fp8"))
        assert 1.5 < bf16.prefill_s / fp8.prefill_s <= 2.0  # attention stays BF16
    h20 = estimate(m, DB.get("h20"), FORMATS["bf16"], wl)
    assert {op.bound for op in h20.prefill.ops} == {"compute"}  # ridge 37 FLOP/B
    # on B200 (ridge 281) 8192 tokens give each expert 256 rows: BF16 experts stay memory-bound
    assert {op.name: op.bound for op in bf16.prefill.ops}["experts"] == "memory"
    prefill_flops = sum(op.flops for op in bf16.prefill.ops)
    linear = 2 * 8192 * (m.active_params - m.params(Role.EMBEDDING, Role.NORM))
    assert prefill_flops > linear


def test_unknown_numbers_are_reported_not_invented() -> None:
    m = load_model("deepseek-v3.1")
    c550 = estimate(m, DB.get("c550"), FORMATS["fp8"], Workload())
    assert c550.min_chips is None and c550.decode is None and c550.fits is None
    assert any("not published" in n for n in c550.notes)
    pr = estimate(m, DB.get("ascend950pr"), FORMATS["bf16"], Workload(batch=8))
    assert pr.prefill is None and pr.decode is not None  # BF16 peak unknown: bandwidth bound only
    assert any("BF16 peak not published" in n for n in pr.notes)


def test_plan_orders_chip_format_batch_and_validates() -> None:
    m = load_model("qwen2.5-7b")
    out = plan(m, DB.select(["h20", "l20"]), [FORMATS["bf16"], FORMATS["fp8"]], [1, 8], 2048)
    assert [(e.chip.key, e.fmt.name, e.workload.batch) for e in out][:3] == [
        ("h20", "bf16", 1),
        ("h20", "bf16", 8),
        ("h20", "fp8", 1),
    ]
    assert all(e.num_chips == 1 for e in out)
    with pytest.raises(PlanError):
        Workload(batch=0)
    with pytest.raises(PlanError):
        Workload(reserve=1.0)


# ------------------------------------------------------------------------ calibration
def test_calibration_points_have_ratios() -> None:
    points = {p.id: p for p in calibration_points(DB)}
    assert points["s5000-decode"].estimate is None  # batch not published
    assert points["bw200-gemm"].ratio == pytest.approx(456 / 480)
    for p in points.values():
        if p.phase in ("prefill", "decode") and p.ratio is not None:
            assert 0 < p.ratio < 1, f"{p.id}: a measured system beat the upper bound"


def test_numbers_table_names_fields_of_chip() -> None:
    chip = DB.get("b200")
    assert all(hasattr(chip, n) for n in NUMBERS)
