"""GPT-2 configs, the A100 row, and one list of presets for help, errors and the loader."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import GPT2Config, GPT2LMHeadModel

from ue8m0.cli.main import cli
from ue8m0.plan.chips import Fp8Math, builtin_db
from ue8m0.plan.models import Attention
from ue8m0.plan.precision import FORMATS, compute_path
from ue8m0.plan.presets import ALIASES, PRESETS, load_model, preset_names


@pytest.mark.parametrize("n_inner", [None, 96])
def test_gpt2_config_parameters_equal_transformers(tmp_path: Path, n_inner: int | None) -> None:
    config = GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=128, vocab_size=1000)
    config.n_inner = n_inner
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    with torch.device("meta"):
        theirs = GPT2LMHeadModel(config).num_parameters()  # head tied to wte
    spec = load_model(tmp_path)
    assert spec.total_params == theirs
    assert spec.attention is Attention.GQA and spec.kv_heads == 4 and spec.head_dim == 16
    assert spec.kv_bytes_per_token() == 2 * 3 * 64 * 2
    assert spec.max_context == 128


def test_gpt2_default_config_runs_in_the_cli(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GPT2Config().to_dict()))
    result = CliRunner().invoke(cli, ["plan", "--model", str(tmp_path), "--chip", "a100", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"]["total_params"] == 124_439_808  # GPT-2 small, tied head
    assert out["estimates"][0]["fits"] is True


def test_a100_row_is_sourced_and_has_no_fp8_math() -> None:
    db = builtin_db()
    a100 = db.get("A100")
    assert a100.fp8 is Fp8Math.NONE and a100.capability_class == "D"
    assert a100.number("bf16_tflops") == 312 and a100.number("int8_tops") == 624
    assert a100.number("mem_gb") == 80 and a100.number("mem_bw_tbs") == 2.039
    assert a100.number("fp8_tflops") is None
    assert db.sources["A100-DS"].startswith("https://www.nvidia.com/")
    path = compute_path(a100, FORMATS["fp8"])
    assert path.weight_only and path.label == "bf16 (w-only)"


def test_no_package_data_cites_files_outside_the_repository() -> None:
    data = resources.files("ue8m0.plan") / "data"
    texts = [p.read_text("utf-8") for p in (data / "chips.toml", data / "calibration.toml")]
    texts += [p.read_text("utf-8") for p in (data / "models").iterdir()]
    docs = Path(__file__).parents[1] / "docs" / "plan.md"
    texts.append(docs.read_text("utf-8"))
    for text in texts:
        assert "shared/reference" not in text and "../" not in text


def _help_presets() -> list[str]:
    result = CliRunner().invoke(cli, ["plan", "--help"], terminal_width=300)
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    found = re.search(r"Preset \(([^)]*)\) or a Hugging Face config\.json", flat)
    assert found, flat
    return [n.strip() for n in found.group(1).split(",")]


def test_help_error_and_loader_list_the_same_presets() -> None:
    shipped = sorted(
        p.name[: -len(".json")]
        for p in (resources.files("ue8m0.plan") / "data" / "models").iterdir()
        if p.name.endswith(".json")
    )
    assert sorted(PRESETS) == shipped
    assert _help_presets() == preset_names() == [*shipped, *ALIASES]
    result = CliRunner().invoke(cli, ["plan"])
    assert result.exit_code == 2
    listed = result.output.split("a preset: ")[1].split("; or")[0]
    assert " ".join(listed.split()) == ", ".join(preset_names())
    for name in preset_names():
        assert load_model(name).total_params > 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("{", "not valid JSON")],
)
def test_a_bad_config_json_is_one_plan_error(tmp_path: Path, text: str, reason: str) -> None:
    from ue8m0.plan.errors import PlanError

    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(PlanError, match=reason):
        load_model(str(path))
