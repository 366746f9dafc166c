"""Request inputs checked against the model's inputs, and the answer's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from presso.serving.payload import BadInput, InputSpec, ModelSpec, Rows, merge, parse_inputs, response_body

IMAGE = ModelSpec((InputSpec("x", np.float32, (None, 1, 8, 8)),), text=False, task="classification")
TOKENS = ModelSpec(
    (InputSpec("input_ids", np.int64, (None, None)), InputSpec("attention_mask", np.int64, (None, None))),
    text=True,
    task="embedding",
)


def test_flat_rows_take_the_models_row_shape():
    flat = np.arange(128, dtype=np.float32).reshape(2, 64)
    got = parse_inputs(flat.tolist(), IMAGE, max_rows=10)
    assert got.n == 2 and got.arrays["x"].shape == (2, 1, 8, 8) and got.arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(got.arrays["x"].reshape(2, 64), flat)
    one = parse_inputs(flat[0].tolist(), IMAGE, max_rows=10)
    assert one.arrays["x"].shape == (1, 1, 8, 8)
    nested = parse_inputs(flat.reshape(2, 1, 8, 8).tolist(), IMAGE, max_rows=10)
    np.testing.assert_array_equal(nested.arrays["x"], got.arrays["x"])
    with pytest.raises(BadInput, match="63 values|dimension"):
        parse_inputs(flat[:, :63].tolist(), IMAGE, max_rows=10)


def test_token_arrays_must_be_whole_numbers_in_range():
    ok = parse_inputs({"input_ids": [[101, 7, 102]], "attention_mask": [[1, 1, 1]]}, TOKENS, 4)
    assert ok.arrays["input_ids"].dtype == np.int64 and ok.n == 1
    with pytest.raises(BadInput, match="whole numbers"):
        parse_inputs({"input_ids": [[1.5]], "attention_mask": [[1]]}, TOKENS, 4)
    with pytest.raises(BadInput, match="out of the range"):
        parse_inputs({"input_ids": [[2**70]], "attention_mask": [[1]]}, TOKENS, 4)
    assert parse_inputs(["a", "b"], TOKENS, 4).texts == ["a", "b"]


def test_merge_stacks_in_order():
    a = Rows(n=1, arrays={"x": np.zeros((1, 3), np.float32)})
    b = Rows(n=2, arrays={"x": np.ones((2, 3), np.float32)})
    merged = merge([a, b])
    assert merged.n == 3 and merged.arrays["x"][:, 0].tolist() == [0, 1, 1]
    assert merge([Rows(n=1, texts=["a"]), Rows(n=2, texts=["b", "c"])]).texts == ["a", "b", "c"]
    assert a.group() != Rows(n=1, arrays={"x": np.zeros((1, 4), np.float32)}).group()


def test_answers_per_task_and_non_finite_outputs_become_null():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)  # already probabilities: kept
    body = json.loads(response_body("classification", probs, Rows(n=2)))
    assert body["labels"] == [1, 0] and np.allclose(body["probabilities"], probs)
    logits = np.array([[0.0, np.log(3.0)]], np.float32)
    body = json.loads(response_body("classification", logits, Rows(n=1)))
    np.testing.assert_allclose(body["probabilities"], [[0.25, 0.75]], rtol=1e-6)
    body = json.loads(response_body("regression", np.array([[np.inf], [1.0]], np.float32), Rows(n=2)))
    assert body == {"task": "regression", "outputs": [[None], [1.0]]}
    body = json.loads(response_body("ranking", np.array([[0.5], [2.0]], np.float32), Rows(n=2)))
    assert body["scores"] == [0.5, 2.0]
