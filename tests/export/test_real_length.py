"""Text runs at its real length: padding-free batches give what one text at a time gives."""

from __future__ import annotations

import numpy as np
import pytest
from hf_tiny import tiny_hf_folder

from presso.data.sources import from_texts
from presso.export.onnx_export import export_onnx
from presso.export.predictor import Predictor
from presso.model.huggingface import load_hf_folder
from presso.runtime.lengths import length_batches, real_lengths, trim, typical_row
from presso.runtime.session import length_free, make_session, run_session

TEXTS = [f"sentence {i} says " + "more and " * (i % 13) + "ends." for i in range(41)] + [
    "short",
    "word " * 400,  # longer than any limit: truncated
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny BERT exported to fp32 ONNX with a dynamic sequence axis, and its tokenizer."""
    root = tmp_path_factory.mktemp("real-length")
    model = load_hf_folder(tiny_hf_folder("bert", False, root / "bert"))
    sample = from_texts(TEXTS[:4], model.input_names, model.tokenizer, 16).inputs
    path = export_onnx(model, sample, root / "model.onnx")
    return path, model.tokenizer


def test_lengths_from_the_mask():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert real_lengths({"attention_mask": mask}).tolist() == [3, 1, 4]
    assert real_lengths({"attention_mask": mask[:, ::-1].copy()}) is None  # left-padded: keep
    assert real_lengths({"input_ids": mask}) is None
    cut = trim({"attention_mask": mask, "input_ids": mask * 7, "other": np.ones((3, 2))}, 3)
    assert cut["input_ids"].shape == (3, 3) and cut["other"].shape == (3, 2)
    batches = list(length_batches(np.array([3, 1, 4, 3, 2]), 2))
    assert [b.tolist() for b in batches] == [[2, 0], [3, 4], [1]]  # longest first, stable
    row = typical_row({"attention_mask": mask, "input_ids": mask})
    assert row["input_ids"].shape == (1, 3)  # the median length (3), cut to it


def test_max_padding_splits_batches_where_padding_would_be_large():
    lengths = np.array([40, 12, 39, 11, 10, 30, 3])
    # by length alone one batch of 8: 3 tokens padded to 40
    assert [b.tolist() for b in length_batches(lengths, 8)] == [[0, 2, 5, 1, 3, 4, 6]]
    # 40 -> 30 is within 1.5x; 30 -> 12 is not; 12 -> 3 pads 9 tokens, more than the slack of 8
    batches = [b.tolist() for b in length_batches(lengths, 8, max_padding=1.5)]
    assert batches == [[0, 2, 5], [1, 3, 4], [6]]
    assert [b.tolist() for b in length_batches(lengths, 2, max_padding=1.5)] == [[0, 2], [5], [1, 3], [4, 6]]
    # short texts: 6 -> 2 is 3x but only 4 pad tokens, cheaper than another run
    assert [b.tolist() for b in length_batches(np.array([2, 6, 5]), 8, max_padding=1.5)] == [[1, 2, 0]]


def test_padding_free_batches_equal_one_text_at_a_time(encoder):
    path, tokenizer = encoder
    predictor = Predictor(path, tokenizer=tokenizer, seq_len=64)
    assert length_free(predictor.session)
    batched = predictor.predict(TEXTS, batch_size=8)
    one_by_one = np.concatenate([predictor.predict(t) for t in TEXTS])
    assert batched.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    grouped = predictor.predict(TEXTS, batch_size=64, max_padding=1.5)  # a server's mixed batch
    np.testing.assert_allclose(grouped, one_by_one, atol=2e-5)
    # the same as every text padded to the limit and run alone (the old fixed-length path)
    padded = from_texts(TEXTS, predictor.input_names, tokenizer, 64).inputs
    alone = np.concatenate(
        [
            predictor.session.run(None, {k: v[i : i + 1] for k, v in padded.items()})[0]
            for i in range(len(TEXTS))
        ]
    )
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    # padded arrays through run_session are cut per batch to the same values
    np.testing.assert_allclose(run_session(predictor.session, padded, 5), alone, atol=2e-5)


def test_order_is_the_callers(encoder):
    path, tokenizer = encoder
    predictor = Predictor(path, tokenizer=tokenizer, seq_len=64)
    forward = predictor.predict(TEXTS, batch_size=4)
    order = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = predictor.predict([TEXTS[i] for i in order], batch_size=4)
    np.testing.assert_allclose(shuffled, forward[order], atol=2e-5)


def test_truncation_limit_is_honoured(encoder):
    path, tokenizer = encoder
    long_text = "word " * 400
    cut = tokenizer(long_text, truncation=True, max_length=10, return_tensors="np")
    assert cut["input_ids"].shape[1] == 10
    session = make_session(path)
    expected = session.run(
        None, {k: cut[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    )[0]
    got = Predictor(path, tokenizer=tokenizer, seq_len=10).predict(long_text)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    fed = []
    predictor = Predictor(path, tokenizer=tokenizer, seq_len=10)
    real_run = predictor.session.run
    predictor.session.run = lambda names, feed: (fed.append(feed["input_ids"].shape), real_run(names, feed))[
        1
    ]  # type: ignore[method-assign]
    predictor.predict(["a b", long_text, "c d e f"], batch_size=2)
    assert fed == [(2, 10), (1, 4)]  # the long text cut to 10; the short batch padded to its own longest


def test_empty_input_is_a_clear_error(encoder):
    from presso.errors import PressoError

    path, tokenizer = encoder
    with pytest.raises(PressoError, match="empty"):
        Predictor(path, tokenizer=tokenizer).predict([])
