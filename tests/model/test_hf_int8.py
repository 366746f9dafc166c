"""int8 within the default budget on every encoder family, as an encoder and as a classifier.

Each run goes through ``presso.compress`` (about 20-50 s on a loaded 2-core machine), so the
full matrix is e2e; the default run keeps the hardest case: DeBERTa-v2, whose attention ORT
does not fuse, as a classifier scored against labels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hf_tiny import FAMILIES, tiny_hf_folder

import presso
from presso.data.sources import from_texts
from presso.examples.texts import stdlib_sentences
from presso.measure import BenchSettings
from presso.model.huggingface import load_hf_folder
from presso.tasks import imbalanced

QUICK = BenchSettings(rounds=1, round_seconds=0.02, throughput_batch=8)
SEQ_LEN = 24


@pytest.fixture(scope="module")
def sentences():
    return stdlib_sentences(240)


def _decided(folder, texts, n=80, margin=0.1):
    """Texts whose fp32 prediction no rounding flips, labelled with it: accuracy 1.0 at fp32.

    A tiny random classifier leaves some texts on the decision boundary, where any
    change of weights flips the prediction; those measure chance, not quantization.
    """
    model = load_hf_folder(folder)
    logits = model.run_torch(from_texts(texts, model.input_names, model.tokenizer, SEQ_LEN).inputs)
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = np.flatnonzero(top2[:, 1] - top2[:, 0] > margin)[:n]
    assert len(keep) == n, f"only {len(keep)} decided texts"
    return [texts[i] for i in keep], logits[keep].argmax(1)


def _compress_and_check(family, classifier, sentences, tmp_path):
    # At transformers' default init a tiny classifier's logits barely depend on the text.
    folder = tiny_hf_folder(
        family, classifier, tmp_path / family, initializer_range=0.3 if classifier else None
    )
    data = _decided(folder, sentences) if classifier else sentences[:80]
    result = presso.compress(folder, [presso.Int8()], data=data, seq_len=SEQ_LEN, bench=QUICK)
    report = result.report
    assert report.task == ("classification" if classifier else "embedding")
    assert report.budget.passed and report.budget.drop <= 0.01
    fusion = next(n for n in report.notes if n.startswith("transformer fusion"))
    out = result.save(tmp_path / "artifact")
    # The artifact runs in plain ONNX Runtime, on the family's own tokenizer output.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DequantizeLinear"}, ops
    model = load_hf_folder(folder)
    texts = data[0] if classifier else data
    inputs = from_texts(texts, model.input_names, model.tokenizer, SEQ_LEN).inputs
    got, want = session.run(None, inputs)[0], model.run_torch(inputs)
    # A random classifier's own classes may be imbalanced: the budget then reads balanced accuracy.
    expected = "mean_cosine"
    if classifier:
        expected = "balanced_accuracy" if imbalanced(data[1].tolist(), got.shape[1]) else "accuracy"
    assert report.budget.primary_metric == expected
    if classifier:
        # Over all rows, calibration ones included: the budget holds on held-out rows only,
        # and int8 moves a random DeBERTa's logits by up to 0.43 (measured), past a few margins.
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    else:
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() > 0.99
    return report, fusion


@pytest.mark.int8_kernel
def test_int8_deberta_classifier(sentences, tmp_path):
    report, fusion = _compress_and_check("deberta-v2", True, sentences, tmp_path)
    assert "Attention fused in 0 of 2 blocks" in fusion and "disentangled attention" in fusion


@pytest.mark.e2e
@pytest.mark.int8_kernel
@pytest.mark.parametrize("classifier", [False, True], ids=["encoder", "classifier"])
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_every_family(family, classifier, sentences, tmp_path):
    _, fusion = _compress_and_check(family, classifier, sentences, tmp_path)
    assert fusion.startswith(f"transformer fusion ({family}")
