"""How long a dataset's texts are in tokens, for the report: the lengths the model is timed at."""

from __future__ import annotations

from typing import Any

import numpy as np

from presso.data.dataset import Dataset
from presso.runtime.lengths import real_lengths


def token_lengths(rows: Dataset, tokenizer: Any, max_tokens: int) -> dict[str, Any] | None:
    """Median, p95 and longest token count of ``rows`` (special tokens included, after
    truncation to ``max_tokens``) and how many texts were longer and truncated (None where
    the raw texts or the tokenizer are unknown); None for rows that are not token rows."""
    lengths = real_lengths(rows.inputs)
    if lengths is None:
        return None
    truncated = None
    if rows.texts is not None and tokenizer is not None:
        # one token over the limit is enough to tell a truncated text (and no warning about
        # texts longer than the model takes, as tokenizing them whole would print)
        ids = tokenizer(list(rows.texts), truncation=True, max_length=max_tokens + 1)["input_ids"]
        truncated = sum(len(i) > max_tokens for i in ids)
    return {
        "texts": len(lengths),
        "median": float(np.median(lengths)),
        "p95": round(float(np.percentile(lengths, 95)), 1),
        "max": int(lengths.max()),
        "truncated": truncated,
    }
