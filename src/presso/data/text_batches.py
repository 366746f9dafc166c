"""Texts tokenized in batches at their real length, for running a text model.

Every text is tokenized once (truncated to ``max_tokens``), the texts are sorted by token
count, longest first, and each batch is padded only to its own longest text: a batch of
one is not padded at all. The caller gets each batch's row numbers to put the outputs
back in its own order (:func:`presso.runtime.lengths.length_batches` orders them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from presso.data.sources import model_inputs
from presso.errors import PressoError
from presso.runtime.lengths import length_batches


def token_rows(texts: list[str], tokenizer: Any, max_tokens: int) -> dict[str, list[list[int]]]:
    """Unpadded token lists per text (``input_ids``, ``attention_mask``, maybe ``token_type_ids``)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens)
    return {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def one_text(text: str, tokenizer: Any, input_names: list[str], max_tokens: int) -> dict[str, np.ndarray]:
    """The feed of one text at its real length (no padding to add)."""
    enc = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="np")
    return model_inputs(enc, input_names)


def _padded(rows: list[list[int]], length: int, value: int, left: bool) -> np.ndarray:
    out = np.full((len(rows), length), value, np.int64)
    for i, row in enumerate(rows):
        if left:
            out[i, length - len(row) :] = row
        else:
            out[i, : len(row)] = row
    return out


def text_batches(
    texts: list[str],
    tokenizer: Any,
    input_names: list[str],
    max_tokens: int,
    batch_size: int,
    fixed_length: int | None = None,
    max_padding: float | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``(row numbers, feed)`` per batch; ``fixed_length`` pads every batch to that length
    (a model exported with a fixed sequence length); ``max_padding``: see
    :func:`presso.runtime.lengths.length_batches`."""
    tokens = token_rows(texts, tokenizer, min(max_tokens, fixed_length or max_tokens))
    unknown = [n for n in input_names if n not in tokens and n != "token_type_ids"]
    if unknown:
        raise PressoError(
            f"The model takes input(s) {unknown} that its tokenizer does not give "
            f"({', '.join(tokens)}); pass a dict of arrays instead of strings."
        )
    lengths = np.fromiter((len(r) for r in tokens["input_ids"]), np.int64, len(texts))
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for rows in length_batches(lengths, batch_size, None if fixed_length else max_padding):
        length = fixed_length or int(lengths[rows].max())
        feed = {}
        for name in input_names:
            if name in tokens:
                value = pad_id if name == "input_ids" else 0
                feed[name] = _padded([tokens[name][i] for i in rows], length, value, left)
            else:  # token_type_ids the tokenizer does not give: one segment
                feed[name] = np.zeros((len(rows), length), np.int64)
        yield rows, feed
