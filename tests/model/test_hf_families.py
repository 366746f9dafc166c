"""Every supported encoder family loads, exports and fuses; other kinds are refused up front."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_cli
from hf_tiny import FAMILIES, tiny_hf_folder
from numpy.testing import assert_allclose

from presso.data.sources import from_texts
from presso.errors import PressoError
from presso.examples.texts import stdlib_sentences
from presso.export.onnx_export import export_onnx
from presso.model.huggingface import load_hf_folder
from presso.techniques.quantization.transformer_fusion import fuse_transformer

# The inputs each family's forward takes (token_type_ids only where there are two types).
WITH_TYPES = {"bert", "albert", "electra"}
# Attention blocks ORT fuses out of 2 (transformer_fusion.py's table), and EmbedLayerNorm.
ATTENTION = {"mpnet": 0, "deberta-v2": 0, "albert": 1}
EMBED_LAYER_NORM = {"bert", "distilbert", "electra"}


@pytest.fixture(scope="module")
def texts():
    return stdlib_sentences(12)


@pytest.mark.parametrize("classifier", [False, True], ids=["encoder", "classifier"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_exports(family, classifier, texts, tmp_path):
    folder = tiny_hf_folder(family, classifier, tmp_path / family)
    model = load_hf_folder(folder)
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if family in WITH_TYPES else [])
    assert model.input_names == expected
    assert model.task_hint == ("classification" if classifier else "embedding")
    assert model.transformer == {"model_type": family, "num_heads": 4, "hidden_size": 32}
    data = from_texts(texts, model.input_names, model.tokenizer, 48)
    reference = model.run_torch(data.inputs)
    assert reference.shape == ((12, 2) if classifier else (12, 32))
    path = export_onnx(model, {k: v[:2] for k, v in data.inputs.items()}, tmp_path / "model.onnx")
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, data.inputs)[0]
    assert_allclose(exported, reference, atol=1e-5, rtol=0)
    if not classifier:  # a classifier's body is the same graph: fused the same way
        _check_fusion(family, path, model.transformer, data.inputs, reference, tmp_path)


def _check_fusion(family, path, shape, inputs, reference, tmp_path):
    """What ORT fuses in each family, and the stage note saying why attention was not."""
    fused_path, stats, note = fuse_transformer(path, tmp_path / "fused.onnx", shape, print)
    assert fused_path == tmp_path / "fused.onnx"
    assert stats.get("Attention", 0) == ATTENTION.get(family, 2)
    assert stats.get("EmbedLayerNormalization", 0) == (1 if family in EMBED_LAYER_NORM else 0)
    assert stats.get("SkipLayerNormalization", 0) >= 4
    assert stats.get("BiasGelu", 0) + stats.get("FastGelu", 0) == 2
    assert note is not None and note.startswith(f"transformer fusion ({family}")
    assert ("Attention fused in" in note) == (family in ATTENTION)
    fused = ort.InferenceSession(str(fused_path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert_allclose(fused, reference, atol=1e-5, rtol=0)


def _config_only(folder, config: dict):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


REFUSED = {
    "gpt2": ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "decoder-only"),
    "llama": ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "decoder-only"),
    "llama-no-arch": ({"model_type": "llama"}, "decoder-only"),
    "wav2vec2": ({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}, "speech"),
    "t5": (
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True},
        "sequence-to-sequence",
    ),
    "bart-encoder-decoder": ({"model_type": "bart", "is_encoder_decoder": True}, "sequence-to-sequence"),
    "vit": ({"model_type": "vit", "architectures": ["ViTForImageClassification"]}, "vision"),
    "bert-decoder": (
        {"model_type": "bert", "architectures": ["BertLMHeadModel"], "is_decoder": True},
        "decoder-only",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_kinds_refused_before_weights(name, tmp_path):
    # Only a config.json: refusing must not need (or read) weights or a tokenizer.
    config, kind = REFUSED[name]
    folder = _config_only(tmp_path / name, config)
    with pytest.raises(PressoError, match=kind) as info:
        load_hf_folder(folder)
    message = str(info.value)
    assert "\n" not in message
    assert f"model_type '{config['model_type']}'" in message
    assert all(f in message for f in FAMILIES)  # names the supported choices


@pytest.mark.e2e
def test_unsupported_folder_cli_exits_2_and_leaves_nothing(tmp_path):
    folder = _config_only(tmp_path / "gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    texts = tmp_path / "t.txt"
    texts.write_text("one sentence\nanother sentence\n")
    out = tmp_path / "out"
    done = run_cli("compress", str(folder), "--data", str(texts), "--out", str(out), "--quiet")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "GPT2LMHeadModel" in last and "decoder-only" in last and "bert" in last
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "t.txt"]


def test_untested_encoder_family_loads_with_a_note(tmp_path):
    """A masked-LM encoder outside the tested families (CamemBERT) loads, and says so."""
    import transformers
    from hf_tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("roberta")
    config = transformers.CamembertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
    )
    transformers.AutoModel.from_config(config).save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    model = load_hf_folder(tmp_path)
    assert model.input_names == ["input_ids", "attention_mask"]
    assert any("camembert is not among the encoder families presso tests" in n for n in model.notes)
    out = model.run_torch(from_texts(["a short text"], model.input_names, model.tokenizer, 16).inputs)
    assert out.shape == (1, 32) and np.all(np.isfinite(out))
