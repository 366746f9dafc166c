"""Pooling as the folder defines it: presso's output equals SentenceTransformer(folder).encode."""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
import pytest
from hf_tiny import tiny_hf_folder
from numpy.testing import assert_allclose

from presso.data.sources import from_texts
from presso.errors import PressoError
from presso.examples.texts import stdlib_sentences
from presso.export.onnx_export import export_onnx
from presso.model.huggingface import load_hf_folder

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def texts():
    # Lengths from a few tokens to past seq_len: padding and truncation both show.
    sentences = stdlib_sentences(14)
    return ["Short.", "A second, slightly longer text about files.", *sentences]


def _presso_and_onnx(folder, texts, tmp_path, seq_len=64):
    model = load_hf_folder(folder)
    data = from_texts(texts, model.input_names, model.tokenizer, seq_len)
    ours = model.run_torch(data.inputs)
    path = export_onnx(model, {k: v[:2] for k, v in data.inputs.items()}, tmp_path / "model.onnx")
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, data.inputs)[0]
    return model, ours, exported


def _encode(folder, texts, seq_len=64):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = seq_len  # presso truncates at seq_len too
    return st.encode(texts, batch_size=8)  # padded to the longest of each batch, not to seq_len


@pytest.mark.parametrize(
    ("family", "pooling"),
    [
        ("bert", "cls+normalize"),
        ("roberta", "mean_sqrt_len"),
        ("distilbert", "max"),
        ("deberta-v2", "mean+normalize"),
        ("mpnet", "weightedmean"),
        ("electra", "lasttoken"),
    ],
)
def test_pooling_equals_sentence_transformers(family, pooling, texts, tmp_path):
    folder = tiny_hf_folder(family, False, tmp_path / "folder", pooling=pooling)
    model, ours, exported = _presso_and_onnx(folder, texts, tmp_path)
    expected = _encode(folder, texts)
    assert ours.shape == expected.shape == (len(texts), 32)
    assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert_allclose(exported, expected, atol=1e-5, rtol=0)
    if pooling.endswith("+normalize"):
        assert_allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    assert any(n.startswith("sentence-transformers modules:") for n in model.notes)


def test_max_pooling_ignores_padding(texts, tmp_path):
    """Padded positions never win the max: a short text pooled at seq_len 128 and at 16 agree."""
    folder = tiny_hf_folder("bert", False, tmp_path / "folder", pooling="max")
    model = load_hf_folder(folder)
    long_pad = model.run_torch(from_texts(texts[:1], model.input_names, model.tokenizer, 128).inputs)
    short_pad = model.run_torch(from_texts(texts[:1], model.input_names, model.tokenizer, 16).inputs)
    assert_allclose(long_pad, short_pad, atol=1e-5, rtol=0)


def test_dense_and_normalize_modules(texts, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    base = tiny_hf_folder("bert", False, tmp_path / "base")
    torch.manual_seed(3)
    st = SentenceTransformer(
        modules=[
            Transformer(str(base)),
            Pooling(32, "cls"),
            Dense(32, 24, activation_function=torch.nn.GELU()),
            Normalize(),
        ],
        device="cpu",
    )
    st.save(str(tmp_path / "folder"))
    model, ours, exported = _presso_and_onnx(tmp_path / "folder", texts, tmp_path)
    expected = _encode(tmp_path / "folder", texts)
    assert expected.shape == (len(texts), 24)
    assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert_allclose(exported, expected, atol=1e-5, rtol=0)
    assert "cls pooling, dense 32->24, L2-normalised" in " ".join(model.notes)


def _modules(folder, entries):
    (folder / "modules.json").write_text(
        json.dumps([{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(entries)])
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cnn", "lists a sentence_transformers.models.CNN module, which presso cannot export"),
        ("residual", "Dense module with a residual"),
        ("no-pooling", "has no Pooling module"),
        ("unknown-mode", "pooling mode 'first_last'"),
    ],
)
def test_unexportable_modules_refused_in_one_line(case, expected, tmp_path):
    folder = tiny_hf_folder("bert", False, tmp_path / "folder", pooling="mean")
    transformer = ("", "sentence_transformers.models.Transformer")
    pooling = ("1_Pooling", "sentence_transformers.models.Pooling")
    if case == "cnn":
        _modules(folder, [transformer, ("1_CNN", "sentence_transformers.models.CNN"), pooling])
    elif case == "residual":
        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(
            json.dumps({"in_features": 32, "out_features": 32, "use_residual": True})
        )
        _modules(folder, [transformer, pooling, ("2_Dense", "sentence_transformers.models.Dense")])
    elif case == "no-pooling":
        _modules(folder, [transformer])
    else:
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "first_last"}))
    with pytest.raises(PressoError, match=expected) as info:
        load_hf_folder(folder)
    assert "\n" not in str(info.value)


def test_subfolder_transformer_layout(texts, tmp_path):
    """Older sentence-transformers folders keep the transformer in 0_Transformer/."""
    folder = tmp_path / "folder"
    tiny_hf_folder("roberta", False, folder / "0_Transformer", pooling="cls+normalize")
    for name in ("modules.json", "1_Pooling", "2_Normalize"):
        (folder / "0_Transformer" / name).rename(folder / name)
    _modules(
        folder,
        [
            ("0_Transformer", "sentence_transformers.models.Transformer"),
            ("1_Pooling", "sentence_transformers.models.Pooling"),
            ("2_Normalize", "sentence_transformers.models.Normalize"),
        ],
    )
    model = load_hf_folder(folder)
    ours = model.run_torch(from_texts(texts, model.input_names, model.tokenizer, 64).inputs)
    assert_allclose(ours, _encode(folder, texts), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_real_minilm_equals_sentence_transformers(texts, tmp_path):
    """The offline all-MiniLM-L6-v2 (mean + Normalize): model.onnx returns what encode returns."""
    from presso.examples.minilm import model_folder

    start = time.perf_counter()
    folder = model_folder()
    model, ours, exported = _presso_and_onnx(folder, texts, tmp_path)
    expected = _encode(folder, texts)
    assert "mean pooling, L2-normalised" in " ".join(model.notes)
    assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert_allclose(exported, expected, atol=1e-5, rtol=0)
    print(f"\nMiniLM vs sentence-transformers: {time.perf_counter() - start:.1f} s")
