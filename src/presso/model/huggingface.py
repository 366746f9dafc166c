"""Hugging Face model folders, loaded offline with transformers.

An encoder (AutoModel) becomes an *embedding* model: the exported graph ends with the
pooling the folder defines (sentence-transformers' modules.json: CLS, mean, max...,
Dense, Normalize; plain mean pooling without it), so ``model.onnx`` returns what
``SentenceTransformer(folder).encode`` returns. A folder whose config names a
``*ForSequenceClassification`` architecture becomes a *classification* model returning
logits. Which folders are taken is decided from config.json before any weight loads
(:mod:`presso.model.hf_families`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from presso.errors import PressoError, reason
from presso.model.hf_families import check_supported, is_classifier, model_inputs, transformer_shape
from presso.model.hf_pooling import SentencePooling, read_pooling
from presso.model.loaded import LoadedModel


class PooledEncoder(nn.Module):
    """An encoder taking token_type_ids, pooled to one embedding per row."""

    def __init__(self, encoder: nn.Module, pooling: SentencePooling | None = None):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling or SentencePooling()

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.pooling(out[0], attention_mask)


class PooledEncoderNoTypes(nn.Module):
    """An encoder without token types (DistilBERT, MPNet, RoBERTa's single type...)."""

    def __init__(self, encoder: nn.Module, pooling: SentencePooling | None = None):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling or SentencePooling()

    def forward(self, input_ids, attention_mask):
        return self.pooling(
            self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0], attention_mask
        )


# The names other modules and tests know: mean pooling is the default pooling.
MeanPooledEncoder, MeanPooledEncoderNoTypes = PooledEncoder, PooledEncoderNoTypes


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


def _first_line(exc: Exception) -> str:
    return reason(exc)


def load_hf_folder(path: Path) -> LoadedModel:
    layout = read_pooling(path)
    where = layout.transformer
    if not (where / "config.json").is_file():
        raise PressoError(
            f"Folder '{where}' is not a Hugging Face model folder (no config.json). "
            "Give a folder saved with save_pretrained(), an .onnx file or a factory file.py:fn."
        )
    try:
        import transformers
    except ImportError:
        raise PressoError("Hugging Face models need transformers: pip install 'presso[hf]'.") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    try:
        config = json.loads((where / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PressoError(
            f"Cannot read '{where / 'config.json'}': {_first_line(exc)}. Save the folder again."
        ) from None
    notes = check_supported(config, where)  # before any weight is read
    classifier = is_classifier(config)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(where))
        auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
        # Eager attention exports to the MatMul/Softmax pattern that ONNX Runtime's
        # transformer optimizer fuses; the SDPA export fuses nothing (measured).
        hf_model = _quietly(auto.from_pretrained, str(where), attn_implementation="eager")
    except Exception as exc:
        raise PressoError(f"Cannot load Hugging Face model from '{where}': {_first_line(exc)}") from exc
    hf_model.eval()
    names = model_inputs(hf_model, hf_model.config)
    with_types = "token_type_ids" in names
    module: nn.Module
    if classifier:
        module, task = SequenceClassifier(hf_model, with_types), "classification"
    else:
        module = (PooledEncoder if with_types else PooledEncoderNoTypes)(hf_model, layout.pooling)
        task = "embedding"
        if layout.from_modules_json:
            notes.append(f"sentence-transformers modules: {layout.pooling.describe()}")
    module.eval()
    shape = transformer_shape(hf_model.config)
    return LoadedModel(
        name=path.name,
        source=f"Hugging Face folder {path}",
        module=module,
        input_names=names,
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        tokenizer=tokenizer,
        task_hint=task,
        transformer=shape,
        notes=[f"{shape['model_type']} loaded with eager attention (fusable by ONNX Runtime)", *notes],
    )
