"""Hugging Face folders and .txt data, on a tiny BERT built here (fast) and the real MiniLM."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import FAST_BENCH, read_report, run_cli

import presso
from presso.examples.minilm import model_folder
from presso.examples.texts import stdlib_sentences


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(model_folder()))  # a real vocabulary, offline
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def sentences_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(stdlib_sentences(120)) + "\n\n")  # blank lines are skipped
    return path


@pytest.mark.int8_kernel
def test_hf_folder_with_text_file(tiny_bert, sentences_file, tmp_path):
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        str(tiny_bert),
        "--data",
        str(sentences_file),
        "--seq-len",
        "32",
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = read_report(out)
    assert report["task"] == "embedding"  # inferred: a text encoder
    assert report["data"]["rows"] == 120
    assert [i["name"] for i in report["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report["budget"]["primary_metric"] == "mean_cosine"
    assert report["compressed"]["metrics"]["mean_cosine"] >= 0.99
    # ONNX Runtime's transformer fusion found every attention block (given heads/width).
    assert any("2 Attention" in note for note in report["notes"]), report["notes"]
    model = presso.load(out)
    emb = model.predict(["The quick brown fox.", "A sentence about files and folders."])
    assert emb.shape == (2, 32) and np.all(np.isfinite(emb))


def test_text_model_refuses_wrong_file_kind(tiny_bert, tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((10, 4), np.float32))
    done = run_cli(
        "compress", str(tiny_bert), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "input_ids" in done.stderr.splitlines()[-1]


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_cli("compress", str(tmp_path / "empty"), "--data", "x.txt", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "config.json" in done.stderr


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_no_temporary_files_left_in_the_working_directory(tiny_bert, sentences_file, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    done = run_cli(
        "compress",
        str(tiny_bert),
        "--data",
        str(sentences_file),
        "--seq-len",
        "32",
        "--out",
        str(tmp_path / "art"),
        *FAST_BENCH,
        cwd=work,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(work.iterdir()) == []


@pytest.mark.int8_kernel
def test_static_int8_keeps_layernorm_softmax_gelu_and_adds_float(tiny_bert, sentences_file, monkeypatch):
    from presso.recipe.schema import Recipe, Stage
    from presso.techniques.quantization import int8

    recipe = Recipe(name="static", stages=[Stage(technique="int8", options={"variants": ["static-s8s8"]})])

    def cosine(ops):
        monkeypatch.setattr(int8, "STATIC_TRANSFORMER_OPS", ops)
        result = presso.compress(
            str(tiny_bert),
            recipe,
            data=str(sentences_file),
            seq_len=32,
            max_drop=1.0,
            bench=presso.measure.BenchSettings(rounds=1, throughput_batch=4),
        )
        import onnx

        kinds = {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
        return result.report.compressed.metrics["mean_cosine"], kinds

    careful, careful_ops = cosine(["MatMul", "Gemm"])
    everything, _ = cosine(None)  # ORT's default: LayerNorm, Softmax, Add... quantized as well
    assert "QuantizeLinear" in careful_ops
    # On this untrained BERT both stay close, but the loss with everything quantized is
    # several times larger (measured 8.4e-5 vs 1.4e-5); on trained transformers it collapses.
    assert (1 - careful) < 0.5 * (1 - everything) and careful >= 0.99
    print(
        f"static int8 tiny BERT mean cosine: matrix products only {careful:.4f}, everything {everything:.4f}"
    )


@pytest.mark.int8_kernel
def test_slim_removes_heads_and_neurons_and_composes_with_fused_int8(tiny_bert, sentences_file):
    """slim on a BERT folder prunes heads / FFN neurons; the int8 stage after it must fuse
    attention with the *pruned* head count (a stale count fuses wrong heads silently)."""
    import onnx

    from presso.measure.bench import BenchSettings
    from presso.recipe.schema import Recipe, Stage

    slim = Stage(technique="slim", options={"heads": 0.5, "ffn": 0.5, "epochs": 0, "backoff": 0})
    bench = BenchSettings(rounds=1, throughput_batch=4)
    runs = {}
    for name, stages in (("slim", [slim]), ("slim-int8", [slim, Stage(technique="int8")])):
        runs[name] = presso.compress(
            str(tiny_bert),
            Recipe(name=name, stages=stages),
            data=str(sentences_file),
            seq_len=32,
            max_drop=1.0,
            bench=bench,
        )
    report = runs["slim"].report
    # 2 layers x (2 of 4 heads of 8 dims: Q, K, V rows + output columns; 32 of 64 neurons)
    heads = 2 * (3 * (16 * 32 + 16) + 16 * 32)
    ffn = 2 * (32 * 32 + 32 + 32 * 32)
    note = next(n for n in report.notes if n.startswith("slim:"))
    before, after = (
        int(v.replace(",", "")) for v in re.search(r"parameters ([\d,]+) -> ([\d,]+)", note).groups()
    )
    assert before - after == heads + ffn
    # The ONNX count (initializers) sees the same cut, give or take graph constants.
    assert abs((report.baseline.parameters - report.compressed.parameters) - (heads + ffn)) < 0.02 * (
        heads + ffn
    )
    assert any("50% of heads, 50% of ffn removed" in n for n in report.notes)
    kinds = [n.op_type for n in onnx.load(str(runs["slim-int8"].model_path)).graph.node]
    assert kinds.count("Attention") == 2 or "MatMulInteger" in kinds
    texts = stdlib_sentences(120)[-16:]
    a = presso.load(runs["slim"].save(sentences_file.parent / "a")).predict(texts)
    b = presso.load(runs["slim-int8"].save(sentences_file.parent / "b")).predict(texts)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.98, cos  # int8 of the pruned model stays close to the pruned model


def test_slim_pins_the_retried_heads_and_ffn_fractions(tiny_bert, sentences_file, monkeypatch):
    """A milder retry scales heads and ffn together: recipe.yaml must pin both, or re-running
    it would prune the original fraction of heads."""
    from presso.measure.bench import BenchSettings
    from presso.recipe.schema import Recipe, Stage
    from presso.techniques.pruning import slim_stage

    monkeypatch.setattr(slim_stage, "milder", lambda first, steps: [first / 2])  # start at the retry
    slim = Stage(technique="slim", options={"heads": 0.5, "ffn": 0.5, "epochs": 0})
    result = presso.compress(
        str(tiny_bert),
        Recipe(name="slim", stages=[slim]),
        data=str(sentences_file),
        seq_len=32,
        max_drop=1.0,
        bench=BenchSettings(rounds=1, throughput_batch=4),
    )
    pinned = result.recipe.stages[0].options
    assert (pinned["heads"], pinned["ffn"]) == (0.25, 0.25)


def test_texts_with_labels_keep_the_asked_token_length(tiny_bert):
    from presso.data.resolve import resolve_data
    from presso.model.sources import load_model

    loaded = load_model(tiny_bert)
    texts = stdlib_sentences(6)
    ds = resolve_data((texts, np.arange(6) % 2), loaded, seq_len=16)
    assert ds.inputs["input_ids"].shape == (6, 16) and ds.texts == texts
    assert ds.target is not None and list(ds.target) == [0, 1, 0, 1, 0, 1]
