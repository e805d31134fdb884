"""``ue8m0 report`` on small synthetic checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from ue8m0.cli.main import cli, main
from ue8m0.recipes import get_recipe
from ue8m0.report import analyze_checkpoint

OUTLIER = "model.layers.1.mlp.down_proj.weight"


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {
        f"model.layers.{i}.mlp.down_proj.weight": (rng.standard_normal((256, 384)) * 0.02).astype(
            np.float32
        )
        for i in range(3)
    }
    tensors[OUTLIER][3, 5] = 0.02 * 2.0**16  # crushes the small values of its 128x128 block
    tensors["model.layers.0.input_layernorm.weight"] = np.ones(384, np.float32)
    tensors["model.embed_tokens.weight"] = (rng.standard_normal((100, 384)) * 0.05).astype(
        ml_dtypes.bfloat16
    )
    return tensors


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(_weights(), str(path))
    return path


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_outlier_tensor_is_ranked_worst(checkpoint: Path) -> None:
    doc = json.loads(
        _run("report", str(checkpoint), "--json", "--recipe", "rceil", "--recipe", "fp32")
    )
    names = [t["name"] for t in doc["tensors"]]
    assert names[0] == OUTLIER
    assert len(names) == 4
    assert doc["skipped"] == {
        "model.layers.0.input_layernorm.weight": (
            "fewer than 2 dims (norms and biases stay in high precision)"
        )
    }
    worst = doc["tensors"][0]["recipes"]["rceil"]
    others = [t["recipes"]["rceil"] for t in doc["tensors"][1:]]
    assert worst["worst_row_sqnr_db"] < min(o["worst_row_sqnr_db"] for o in others) - 6
    assert worst["flushed"] > max(o["flushed"] for o in others)
    summary = doc["recipes"]["rceil"]["summary"]
    assert 0 <= summary["headroom"]["min_bits"] <= summary["headroom"]["max_bits"] < 1
    assert abs(doc["recipes"]["fp32"]["summary"]["headroom"]["max_bits"]) < 1e-6
    assert sum(summary["headroom"]["histogram"]["counts"]) == summary["headroom"]["blocks"]


def test_terminal_table_lists_recipes_and_worst_tensor(checkpoint: Path) -> None:
    out = _run("report", str(checkpoint), "--recipe", "rceil", "--recipe", "mxfp4", "--top", "1")
    lines = out.splitlines()
    assert any(line.startswith("rceil") and "e4m3 128x128 rceil" in line for line in lines)
    assert any(line.startswith("mxfp4") for line in lines)
    assert lines[lines.index(next(x for x in lines if x.startswith("worst"))) + 2].startswith(
        OUTLIER
    )


def test_streaming_in_small_slabs_gives_the_same_numbers(checkpoint: Path) -> None:
    recipes = [get_recipe("rceil"), get_recipe("mxfp8")]
    whole = analyze_checkpoint(checkpoint, recipes)
    slabs = analyze_checkpoint(checkpoint, recipes, slab_bytes=1)  # one 128-row slab at a time
    for a, b in zip(whole.tensors, slabs.tensors, strict=True):
        for name in ("rceil", "mxfp8"):
            assert a.recipes[name].errors.result() == pytest.approx(b.recipes[name].errors.result())
            assert a.recipes[name].exponents == b.recipes[name].exponents


def test_sharded_directory_with_fp8_tensors(tmp_path: Path) -> None:
    weights = _weights(1)
    names = sorted(weights)
    save_file({n: weights[n] for n in names[:2]}, str(tmp_path / "a.safetensors"))
    fp8 = {
        "model.layers.9.proj.weight": np.zeros((128, 128), ml_dtypes.float8_e4m3fn),
        "model.layers.9.proj.weight_scale_inv": np.ones((1, 1), np.float32),
        **{n: weights[n] for n in names[2:]},
    }
    save_file(fp8, str(tmp_path / "b.safetensors"))
    index = {"weight_map": {n: "a.safetensors" for n in names[:2]}}
    index["weight_map"].update({n: "b.safetensors" for n in fp8})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    doc = json.loads(_run("report", str(tmp_path), "--json", "--recipe", "rceil"))
    # FP8 tensors are measured as their dequantized values (issue 5)
    want = {n for n in names if weights[n].ndim == 2} | {"model.layers.9.proj.weight"}
    assert {t["name"] for t in doc["tensors"]} == want
    assert "model.layers.9.proj.weight_scale_inv" in doc["skipped"]


def test_html_and_png_files(checkpoint: Path, tmp_path: Path) -> None:
    from matplotlib import image

    out = tmp_path / "rep"
    _run("report", str(checkpoint), "--recipe", "rceil", "--recipe", "fp32", "--out", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {
        "error_by_layer.png",
        "headroom.png",
        "scale_exponents.png",
        "block_error_scatter.png",
    }
    for png in pngs:
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert f'src="{png.name}"' in page
    assert OUTLIER in page
    assert json.loads((out / "report.json").read_text())["tensors"][0]["name"] == OUTLIER


@pytest.mark.parametrize("args", [["--recipe", "rceil"], ["--recipe", "e4m3:7x7:nope"]])
def test_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x01" * 4)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(bad), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ue8m0: error:") and err.count("\n") == 1
