"""``presso.compress`` with ``Slim`` on Hugging Face folders of non-BERT families, end to end:
load, trace the blocks inside the loader's wrapper, prune, export, measure."""

from __future__ import annotations

import re

import pytest
import torch

import presso
from presso.examples.minilm import model_folder
from presso.examples.texts import stdlib_sentences
from presso.measure.bench import BenchSettings

transformers = pytest.importorskip("transformers")

# 2 layers, each losing 2 of 4 heads of 8 (Q, K, V: 16 rows of 32 + bias; 16 output columns)
# and 32 of 64 neurons (rows of 32 + bias; 32 columns)
CUT = 2 * ((3 * (16 * 32 + 16) + 16 * 32) + (32 * 32 + 32 + 32 * 32))


def _folder(tmp_path, family: str):
    t = transformers
    tokenizer = t.AutoTokenizer.from_pretrained(str(model_folder()))  # a real vocabulary, offline
    size = {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": 128}
    torch.manual_seed(0)
    if family == "distilbert":  # takes no token_type_ids: the tokenizer must not give them
        model = t.DistilBertModel(t.DistilBertConfig(dim=32, n_heads=4, hidden_dim=64, n_layers=2, **size))
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    else:  # DeBERTa-v3 style relative attention
        config = t.DebertaV2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            position_buckets=16,
            norm_rel_ebd="layer_norm",
            **size,
        )
        model = t.DebertaV2Model(config)
    folder = tmp_path / family
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.e2e
@pytest.mark.parametrize("family", ["distilbert", "deberta-v2"])
def test_slim_compresses_a_non_bert_folder(tmp_path, family):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(stdlib_sentences(120)) + "\n")
    result = presso.compress(
        str(_folder(tmp_path, family)),
        [presso.Slim(heads=0.5, ffn=0.5, epochs=0, backoff=0)],
        data=str(sentences),
        seq_len=32,
        max_drop=1.0,
        bench=BenchSettings(rounds=1, throughput_batch=4),
    )
    report = result.report
    note = next(n for n in report.notes if n.startswith("slim:"))
    assert "50% of heads, 50% of ffn removed" in note
    before, after = (
        int(v.replace(",", "")) for v in re.search(r"parameters ([\d,]+) -> ([\d,]+)", note).groups()
    )
    assert before - after == CUT == 8_352
    # the ONNX count (initializers) sees the same cut, give or take graph constants
    assert abs((report.baseline.parameters - report.compressed.parameters) - CUT) < 0.02 * CUT
    # untrained, unrecovered: the embeddings barely move (random weights, small residual updates)
    assert report.compressed.metrics["mean_cosine"] > 0.99
