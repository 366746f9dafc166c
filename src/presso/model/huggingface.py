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
import re
from pathlib import Path
from typing import Any

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
    """Call ``fn`` without transformers' own progress bar (presso draws its own) and its
    multi-line loading report (presso states what matters of it in one line)."""
    from transformers.utils import logging as hf_logging

    was_enabled, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


# A saved encoder's own parameters, as opposed to a head it was saved with (an MLM or
# classifier head, a pooler) that the model loaded here rightly leaves out.
_ENCODER_PART = re.compile(r"(^|\.)(embeddings|encoder|layers?|transformer)\.")


def check_weights_fit(loading: dict, classifier: bool, where: Path) -> None:
    """Refuse weights that do not fit the config: transformers loads them anyway, with the
    unfit parameters left random, and the model would be a different one."""
    mismatched = list(loading.get("mismatched_keys") or [])
    if mismatched:
        key, saved, wanted = mismatched[0]
        raise PressoError(
            f"config.json in '{where}' does not match its weights: {key} is {list(saved)} in the "
            f"weights but {list(wanted)} by the config ({len(mismatched)} such). Save the folder again."
        )
    # An encoder saved without its pooler is fine: presso pools the hidden states itself.
    missing = [k for k in loading.get("missing_keys") or [] if classifier or not k.startswith("pooler.")]
    if missing:
        raise PressoError(
            f"The weights in '{where}' lack {len(missing)} parameters the config's model has "
            f"(first: {missing[0]}): config.json does not match them, or the weights file is "
            "incomplete. Save the folder again."
        )
    unused = [
        k
        for k in loading.get("unexpected_keys") or []
        if _ENCODER_PART.search(k) and k.endswith((".weight", ".bias"))
    ]
    if unused:
        raise PressoError(
            f"The weights in '{where}' hold {len(unused)} encoder parameters the config's model "
            f"has no place for (first: {unused[0]}): config.json does not match them (its "
            "num_hidden_layers?). Save the folder again."
        )


def check_tokenizer_fits(tokenizer: Any, config: Any, where: Path) -> None:
    """Refuse a tokenizer that cannot serve this model: one with no vocabulary (transformers
    builds an empty one when the folder lacks its tokenizer files: every word would be
    unknown) or one whose token ids run past the model's embedding table."""
    specials = len(set(tokenizer.all_special_ids))
    if len(tokenizer) <= specials:
        raise PressoError(
            f"'{where}' has no tokenizer vocabulary (tokenizer.json, vocab.txt, ...): save the "
            "tokenizer into the folder too (tokenizer.save_pretrained)."
        )
    embedded = getattr(config, "vocab_size", None)
    if isinstance(embedded, int) and tokenizer.vocab_size > embedded:
        raise PressoError(
            f"The tokenizer in '{where}' has {tokenizer.vocab_size} tokens but the model embeds "
            f"only {embedded}: it belongs to another model. Save the model's own tokenizer there."
        )


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
    if not isinstance(config, dict):
        raise PressoError(f"'{where / 'config.json'}' is not a JSON object. Save the folder again.")
    notes = check_supported(config, where)  # before any weight is read
    classifier = is_classifier(config)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(where))
        auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
        # Eager attention exports to the MatMul/Softmax pattern that ONNX Runtime's
        # transformer optimizer fuses; the SDPA export fuses nothing (measured). Weights
        # that do not fit the config load anyway, to be refused below by name.
        hf_model, loading = _quietly(
            auto.from_pretrained,
            str(where),
            attn_implementation="eager",
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except Exception as exc:
        raise PressoError(f"Cannot load Hugging Face model from '{where}': {_first_line(exc)}") from exc
    check_weights_fit(loading, classifier, where)
    check_tokenizer_fits(tokenizer, hf_model.config, where)
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
