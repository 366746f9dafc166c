"""Which Hugging Face folders presso takes, decided from config.json before any weight loads.

presso exports text *encoders*: an encoder folder becomes an embedding model, a
``*ForSequenceClassification`` folder a classifier. Decoder-only language models,
sequence-to-sequence models and speech or vision models are refused in one line.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from presso.errors import PressoError

# The encoder families presso's tests build and compress (tests/hf_tiny.py). Other masked-LM
# encoders (CamemBERT, ModernBERT...) load too, with a note that they are untested.
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "albert", "electra", "deberta-v2")

_SUPPORTED = (
    f"presso compresses text encoders ({', '.join(FAMILIES)}) as embedding models, "
    "and their *ForSequenceClassification folders as classifiers: give one of those"
)
_SEQ2SEQ_HEADS = ("ForConditionalGeneration", "Seq2SeqLM", "ForSpeechSeq2Seq")
_DECODER_HEADS = ("ForCausalLM", "LMHeadModel")
_SPEECH_HEADS = ("ForCTC", "ForAudioClassification", "ForAudioFrameClassification", "ForXVector")
_VISION_HEADS = ("ForImageClassification", "ForObjectDetection", "ForSemanticSegmentation")


def is_classifier(config: dict) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def check_supported(config: dict, folder: Path) -> list[str]:
    """Refuse a folder that is not a text encoder; the notes to report for one that loads."""
    from transformers.models.auto import modeling_auto as auto

    model_type = str(config.get("model_type", ""))
    archs = [str(a) for a in config.get("architectures") or []]
    named = f"'{folder}' holds {archs[0] if archs else 'a model'} (model_type '{model_type or 'unknown'}')"
    kind = None
    if config.get("is_encoder_decoder") or any(a.endswith(_SEQ2SEQ_HEADS) for a in archs):
        kind = "a sequence-to-sequence model"
    elif (
        model_type in auto.MODEL_FOR_CTC_MAPPING_NAMES
        or model_type in auto.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES
        or any(a.endswith(_SPEECH_HEADS) for a in archs)
    ):
        kind = "a speech model"
    elif config.get("is_decoder") or any(a.endswith(_DECODER_HEADS) for a in archs):
        kind = "a decoder-only language model"
    elif model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            kind = "a decoder-only language model"
        elif model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES or any(
            a.endswith(_VISION_HEADS) for a in archs
        ):
            kind = "a vision model"
        else:
            kind = "not a text encoder presso knows"
    if kind is not None:
        raise PressoError(f"{named}, {kind}; {_SUPPORTED}.")
    if model_type not in FAMILIES:
        return [
            f"{model_type} is not among the encoder families presso tests ({', '.join(FAMILIES)}); check the parity figures"
        ]
    return []


def model_inputs(hf_model: Any, config: Any) -> list[str]:
    """The inputs the model takes, from its forward signature and config, not the tokenizer.

    DistilBERT and MPNet take no token_type_ids; RoBERTa and XLM-R take them but have one
    type (type_vocab_size 1) and DeBERTa-v3 none (0), so feeding zeros would only cost.
    """
    params = inspect.signature(hf_model.forward).parameters
    names = ["input_ids", "attention_mask"]
    missing = [n for n in names if n not in params]
    if missing:
        raise PressoError(
            f"{type(hf_model).__name__} takes no {missing[0]}; presso feeds text encoders input_ids and attention_mask."
        )
    if "token_type_ids" in params and int(getattr(config, "type_vocab_size", 2) or 0) > 1:
        names.append("token_type_ids")
    return names


def transformer_shape(config: Any) -> dict:
    """What ONNX Runtime's fusion needs: {"model_type", "num_heads", "hidden_size"}.

    transformers maps the standard names onto each family's own (DistilBERT's n_heads
    and dim) through ``attribute_map``; the fallbacks cover configs that do not.
    """

    def first(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 0

    return {
        "model_type": str(getattr(config, "model_type", "") or "bert"),
        "num_heads": first("num_attention_heads", "n_heads", "num_heads"),
        "hidden_size": first("hidden_size", "dim", "d_model"),
    }
