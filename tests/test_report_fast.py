"""The report's fast path against its reference path, ``--workers``, and the progress bar.

Tolerance (see :mod:`ue8m0.report.fused`): counts, ``max |e|``, headroom, scale exponents and
the MSE search's codes and scale bytes are equal exactly; float64 sums, which add the same terms
in another order, agree to 1e-12 relative; the per-block errors kept for the scatter plot
(float32) to 1e-6.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_fixtures import BF16, run_cli, save, write_checkpoint
from ue8m0.api import quantize
from ue8m0.cli.main import cli
from ue8m0.formats import ElementFormat, decode_table, element_format
from ue8m0.kernels import refine_mse as refine_mse_fast
from ue8m0.recipes import DEFAULT_RECIPES, get_recipe
from ue8m0.reference import decode_scale_bytes
from ue8m0.report.analysis import CheckpointReport, RecipeStats, analyze_checkpoint
from ue8m0.report.progress import BarReportProgress, ReportProgress, make_report_progress
from ue8m0.report.text import report_json
from ue8m0.search import refine_mse

RECIPES = [get_recipe(n) for n in DEFAULT_RECIPES] + [get_recipe("e4m3:1x128:floor:mse")]
EXACT = ("count", "nonzero", "flushed", "saturated", "max_abs")
SUMS = ("ref_sq", "approx_sq", "err_sq", "dot")


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Edge cases: outliers, zero rows and blocks, partial blocks, 3-D experts, tiny values."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    outlier = w(256, 384)
    outlier[3, 5] = 0.02 * 2.0**16
    outlier[130:140] = 0.0  # zero rows: no noise, no worst row
    outlier[:, 256:] = 0.0  # zero blocks: headroom nan
    partial = w(300, 200, scale=3.0)
    partial[7, :] = 448.0 * 1.02 * 2.0**-3  # just above a power of two: e4m3's MSE moves
    partial[200, ::3] = 1.9 * 2.0**3  # significand above 1.75: floor saturates
    tiny = w(130, 64, scale=1e-30)  # below eps: the clamp's headroom
    return {
        "model.layers.0.mlp.down_proj.weight": outlier.astype(BF16),
        "model.layers.0.self_attn.q_proj.weight": partial,
        "model.layers.1.mlp.experts.up_proj": w(3, 128, 96).astype(np.float16),
        "model.layers.1.tiny.weight": tiny,
        "model.norm.weight": np.ones(64, BF16),
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fast")
    tensors = _tensors()
    names = sorted(tensors)
    return write_checkpoint(
        root / "src",
        {
            "model-00001-of-00002.safetensors": {n: tensors[n] for n in names[:3]},
            "model-00002-of-00002.safetensors": {n: tensors[n] for n in names[3:]},
        },
    )


def _same_stats(fast: RecipeStats, ref: RecipeStats, where: str) -> None:
    a, b = fast.errors, ref.errors
    for key in EXACT:
        assert getattr(a, key) == getattr(b, key), (where, key)
    for key in SUMS:
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12, abs=0), (where, key)
    if math.isfinite(b.worst_row_sqnr):
        assert a.worst_row_sqnr == pytest.approx(b.worst_row_sqnr, rel=1e-12), where
    else:
        assert a.worst_row_sqnr == b.worst_row_sqnr, where
    assert fast.headroom.result() == ref.headroom.result(), where
    assert np.array_equal(fast.headroom.counts, ref.headroom.counts), where
    assert fast.exponents == ref.exponents, where
    x, y = fast.block_error_samples(), ref.block_error_samples()
    assert x.shape == y.shape and np.array_equal(np.isnan(x), np.isnan(y)), where
    np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=where)


def _compare(fast: CheckpointReport, ref: CheckpointReport) -> None:
    assert [t.name for t in fast.tensors] == [t.name for t in ref.tensors]
    for tf, tr in zip(fast.tensors, ref.tensors, strict=True):
        for recipe in RECIPES:
            _same_stats(tf.recipes[recipe.name], tr.recipes[recipe.name], f"{tf.name} {recipe}")


@pytest.mark.parametrize("slab_bytes", [1, 64 << 20])
def test_fast_path_equals_the_reference_path(ckpt: Path, slab_bytes: int) -> None:
    fast = analyze_checkpoint(ckpt, RECIPES, slab_bytes=slab_bytes)
    ref = analyze_checkpoint(ckpt, RECIPES, slab_bytes=slab_bytes, reference=True)
    assert len(fast.tensors) == 4
    _compare(fast, ref)
    # the edge cases are there: saturation, flushes, zero blocks, a moved MSE block
    totals = ref.totals()
    assert totals["floor"].errors.saturated > 0
    assert totals["mxfp4"].errors.flushed > 0
    assert totals["rceil"].headroom.zero_blocks > 0
    assert totals["rceil-mse"].exponents != totals["rceil"].exponents


def test_workers_give_the_same_report(ckpt: Path) -> None:
    recipes = [get_recipe(n) for n in ("rceil", "fp32", "mxfp4-mse")]
    one = analyze_checkpoint(ckpt, recipes)
    two = analyze_checkpoint(ckpt, recipes, workers=2)
    assert json.dumps(report_json(one)) == json.dumps(report_json(two))
    for a, b in zip(one.tensors, two.tensors, strict=True):
        for name in ("rceil", "fp32"):
            assert np.array_equal(
                a.recipes[name].block_error_samples(),
                b.recipes[name].block_error_samples(),
                equal_nan=True,
            )


def _mse_cases() -> list[tuple[str, tuple[int, int], np.ndarray, float, str]]:
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((260, 300)) * 0.02).astype(np.float32)
    tiny = (base * np.float32(2.0**-120)).astype(np.float32)  # subnormal elements, low bytes
    nonfinite = base.copy()
    nonfinite[5, 5] = np.nan  # a NaN block: byte 255, left as it is
    zero = base.copy()
    zero[:128, :128] = 0.0
    cases = []
    for fmt, block in [("e4m3", (128, 128)), ("e2m1", (1, 32)), ("e5m2", (1, 128))]:
        # a block max just above a binade of the format's max beside values near the
        # format's subnormals: the byte below costs the max little and the small values less
        over = base.copy()
        over[::7] = base[::7] * np.float32(2.0**-17 / 0.02)
        over[::7, ::11] = np.float32(element_format(fmt).max * 1.02 * 2.0**-3)
        cases += [
            (fmt, block, base, 1e-4, "raise"),
            (fmt, block, over, 1e-4, "raise"),
            (fmt, block, tiny, 0.0, "raise"),
            (fmt, block, nonfinite, 1e-4, "propagate"),
            (fmt, block, zero, 0.0, "raise"),
        ]
    return cases


def _sse(x: np.ndarray, codes: np.ndarray, byte: int, fmt: ElementFormat) -> float:
    values = decode_table(fmt)[codes].astype(np.float64) * math.ldexp(1.0, int(byte) - 127)
    return math.fsum(((values - x.astype(np.float64)) ** 2).ravel())


@pytest.mark.parametrize(("fmt", "block", "x", "eps", "nonfinite"), _mse_cases())
def test_compiled_mse_search_equals_the_oracle(
    fmt: str, block: tuple[int, int], x: np.ndarray, eps: float, nonfinite: str
) -> None:
    """Codes and scale bytes equal the oracle's in every block but near-ties: blocks whose two
    exact (fsum) squared errors agree to 1e-12, where the oracle's einsum and the kernel's row
    order may round to different sides (both choices err the same)."""
    el = element_format(fmt)
    q = quantize(x, block, el, "rceil", eps, nonfinite)
    assert q.scale_codes is not None
    want_codes, want_scale, want_bytes = refine_mse(x, q.block, el, q.codes, q.scale_codes)
    codes, sbytes = q.codes.copy(), q.scale_codes.copy()
    scale = refine_mse_fast(x, q.block, el, codes, sbytes)
    br, bc = q.block
    for i, j in np.argwhere(sbytes != want_bytes):
        rows, cols = slice(i * br, (i + 1) * br), slice(j * bc, (j + 1) * bc)
        mine = _sse(x[rows, cols], codes[rows, cols], sbytes[i, j], el)
        theirs = _sse(x[rows, cols], want_codes[rows, cols], want_bytes[i, j], el)
        assert mine == pytest.approx(theirs, rel=1e-12), (i, j)
        want_codes[rows, cols] = codes[rows, cols]
        want_bytes[i, j] = sbytes[i, j]
    assert np.array_equal(codes, want_codes)
    assert np.array_equal(sbytes, want_bytes)
    assert np.array_equal(scale, decode_scale_bytes(want_bytes), equal_nan=True)
    assert want_scale.shape == scale.shape


def test_the_mse_cases_move_blocks() -> None:
    moved = {}
    for fmt, block, x, eps, nonfinite in _mse_cases():
        q = quantize(x, block, fmt, "rceil", eps, nonfinite)
        assert q.scale_codes is not None
        _, _, after = refine_mse(x, q.block, element_format(fmt), q.codes, q.scale_codes)
        moved[fmt] = moved.get(fmt, 0) + int(np.count_nonzero(after != q.scale_codes))
    assert all(n > 0 for n in moved.values()), moved


def test_progress_bar_only_on_a_terminal(
    ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert type(make_report_progress(False, False)) is ReportProgress  # captured: not a TTY
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert type(make_report_progress(False, False)) is BarReportProgress
    assert type(make_report_progress(True, False)) is ReportProgress  # -q
    assert type(make_report_progress(False, True)) is ReportProgress  # --json
    monkeypatch.undo()
    threads = set(threading.enumerate())
    analyze_checkpoint(ckpt, [get_recipe("rceil")], workers=2, progress=BarReportProgress())
    err = capsys.readouterr().err
    assert "4/4 tensors" in err and "B/s" in err
    # the bar starts no thread (tqdm's monitor would make the next run spawn its workers)
    assert set(threading.enumerate()) <= threads


def test_progress_counts_every_byte(ckpt: Path) -> None:
    class Count(ReportProgress):
        def __init__(self) -> None:
            self.total, self.seen, self.tensors, self.done = 0, 0, 0, 0

        def start(self, total_bytes: int, tensors: int) -> None:
            self.total, self.tensors = total_bytes, tensors

        def advance(self, nbytes: int) -> None:
            self.seen += nbytes

        def tensor_done(self) -> None:
            self.done += 1

    for workers in (1, 2):
        count = Count()
        analyze_checkpoint(ckpt, [get_recipe("rceil")], workers=workers, progress=count)
        want = sum(a.nbytes for n, a in _tensors().items() if a.ndim >= 2)
        assert (count.total, count.seen, count.tensors, count.done) == (want, want, 4, 4)


def test_cli_workers_json_and_help(ckpt: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli, ["report", "--help"]).output.split())
    assert f"all {len(DEFAULT_RECIPES)} named recipes" in help_text
    result = runner.invoke(
        cli, ["report", str(ckpt), "--json", "--workers", "2", "--recipe", "rceil"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)  # nothing but the document
    assert len(doc["tensors"]) == 4


def test_a_single_tensor_file_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "one.safetensors"
    save(path, {"w": np.ones((128, 128), ml_dtypes.bfloat16)})
    doc = report_json(analyze_checkpoint(path, [get_recipe("rceil")], workers=2))
    assert [t["name"] for t in doc["tensors"]] == ["w"]
    assert doc["tensors"][0]["recipes"]["rceil"]["sqnr_db"] == "inf"


def test_a_non_finite_weight_is_one_line_naming_the_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = np.ones((128, 128), np.float32)
    w[3, 4] = np.nan
    src = write_checkpoint(tmp_path / "src", {"model.safetensors": {"bad.weight": w}})
    code, _, err = run_cli(["report", src, "--json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'bad.weight'" in err and "non-finite value nan" in err and "nonfinite=" not in err
