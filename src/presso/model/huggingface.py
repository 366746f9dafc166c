"""Hugging Face model folders, loaded offline with transformers.

An encoder (AutoModel) becomes an *embedding* model: the exported graph ends with
attention-mask-weighted mean pooling, so ``model.onnx`` returns sentence embeddings
directly. A folder whose config names a ``*ForSequenceClassification`` architecture
becomes a *classification* model returning logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from presso.errors import PressoError
from presso.model.loaded import LoadedModel


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, C)


class MeanPooledEncoder(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return _mean_pool(out[0], attention_mask)


class MeanPooledEncoderNoTypes(nn.Module):
    """For encoders whose tokenizer gives no token_type_ids (RoBERTa, DistilBERT...)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return _mean_pool(self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0], attention_mask)


class SequenceClassifier(nn.Module):
    def __init__(self, model: nn.Module, with_types: bool):
        super().__init__()
        self.model, self.with_types = model, with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def _quietly(fn, *args, **kwargs):
    """Call ``fn`` without transformers' own progress bar (presso draws its own)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return fn(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_hf_folder(path: Path) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise PressoError(
            f"Folder '{path}' is not a Hugging Face model folder (no config.json). "
            "Give a folder saved with save_pretrained(), an .onnx file or a factory file.py:fn."
        )
    try:
        import transformers
    except ImportError:
        raise PressoError("Hugging Face models need transformers: pip install 'presso[hf]'.") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    try:
        config = json.loads((path / "config.json").read_text())
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        is_classifier = any(
            a.endswith("ForSequenceClassification") for a in config.get("architectures") or []
        )
        auto = transformers.AutoModelForSequenceClassification if is_classifier else transformers.AutoModel
        # Eager attention exports to the MatMul/Softmax pattern that ONNX Runtime's
        # transformer optimizer fuses; the SDPA export fuses nothing (measured).
        hf_model = _quietly(auto.from_pretrained, str(path), attn_implementation="eager")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PressoError(f"Cannot load Hugging Face model from '{path}': {first}") from exc
    hf_model.eval()
    with_types = "token_type_ids" in tokenizer.model_input_names
    module: nn.Module
    if is_classifier:
        module, task = SequenceClassifier(hf_model, with_types), "classification"
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    elif with_types:
        module, task = MeanPooledEncoder(hf_model), "embedding"
        names = ["input_ids", "attention_mask", "token_type_ids"]
    else:
        module, task = MeanPooledEncoderNoTypes(hf_model), "embedding"
        names = ["input_ids", "attention_mask"]
    module.eval()
    return LoadedModel(
        name=path.name,
        source=f"Hugging Face folder {path}",
        module=module,
        input_names=names,
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        tokenizer=tokenizer,
        task_hint=task,
        transformer={
            "model_type": config.get("model_type", "bert"),
            "num_heads": int(config.get("num_attention_heads", 0)),
            "hidden_size": int(config.get("hidden_size", 0)),
        },
        notes=[
            f"{config.get('model_type', 'transformer')} loaded with eager attention (fusable by ONNX Runtime)"
        ],
    )
