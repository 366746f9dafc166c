"""Tiny random Hugging Face folders of every encoder family presso supports, built offline.

``tiny_hf_folder(family, classifier, path)`` saves a random model of that family (hidden 32,
2 layers, 4 heads, intermediate 64, 128 usable positions) and the family's own tokenizer
class, with a small vocabulary made here from presso's offline example sentences for the
family's algorithm (WordPiece, byte-level BPE or Unigram), so tokenizer quirks (no
token_type_ids, ``<s>``/``</s>`` specials, pad id 1) are the real ones. The vocabulary is
the same in every process (so is each random model built on it). Nothing is fetched.

``pooling=`` adds a sentence-transformers layout (modules.json, 1_Pooling, 2_Normalize) so
``SentenceTransformer(folder)`` loads the same folder; see :func:`write_pooling`.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "albert", "electra", "deberta-v2")

VOCAB = 600
POSITIONS = 128  # usable tokens; RoBERTa-style families need two more (padding_idx offset)

# family -> (tokenizer algorithm, special tokens in id order)
_TOKENIZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert": ("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")),
    "distilbert": ("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")),
    "electra": ("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")),
    "mpnet": ("wordpiece", ("<s>", "<pad>", "</s>", "[UNK]", "<mask>")),
    "roberta": ("bpe", ("<s>", "<pad>", "</s>", "<unk>", "<mask>")),
    "xlm-roberta": ("unigram", ("<s>", "<pad>", "</s>", "<unk>", "<mask>")),
    "albert": ("unigram", ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")),
    "deberta-v2": ("unigram", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")),
}

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken")


@functools.cache
def _sentences() -> tuple[str, ...]:
    from presso.examples.texts import stdlib_sentences

    return tuple(stdlib_sentences(300))


@functools.cache
def _trained(algorithm: str, specials: tuple[str, ...]) -> dict[str, Any]:
    """A vocabulary (and merges) trained once per process: training takes about a second."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    unk = next(s for s in specials if "unk" in s.lower())
    if algorithm == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=list(specials))
    elif algorithm == "bpe":
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=list(specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=list(specials), unk_token=unk)
    if algorithm == "wordpiece":
        return {"vocab": _counted_wordpiece(tok, specials)}
    tok.train_from_iterator(_sentences(), trainer)
    model = json.loads(tok.to_str())["model"]
    if algorithm == "bpe":  # byte-level BPE training gives the same merges in every process
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return {"vocab": model["vocab"], "merges": merges}
    # Unigram training breaks ties between equally likely pieces differently in each process
    # (measured: another vocabulary per run), so the pieces are kept and re-ordered, and their
    # scores replaced by counts: the same vocabulary, hence the same random model, every run.
    pieces = sorted({p for p, _ in model["vocab"]} - set(specials))
    counts = _piece_counts(tok, pieces)
    ranked = sorted(pieces, key=lambda p: (-counts[p], p))
    total = sum(counts.values()) + len(pieces)
    scores = [(p, math.log((counts[p] + 1) / total)) for p in ranked]
    return {"vocab": [*((s, 0.0) for s in specials), *scores]}


def _counted_wordpiece(tok: Any, specials: tuple[str, ...]) -> dict[str, int]:
    """A WordPiece vocabulary built by counting, not by WordPiece's trainer (which orders
    equally frequent pieces differently in each process): the specials, every character
    alone and as a ``##`` continuation, then the most frequent words, ties broken by name."""
    from collections import Counter

    words: Counter[str] = Counter()
    for text in _sentences():
        normal = tok.normalizer.normalize_str(text)
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(normal))
    chars = sorted({c for w in words for c in w})
    pieces = [*specials, *chars, *(f"##{c}" for c in chars)]
    room = VOCAB - len(pieces)
    pieces += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    return {p: i for i, p in enumerate(pieces)}


def _piece_counts(tok: Any, pieces: list[str]) -> dict[str, int]:
    """How often each piece occurs in the sentences' words (a Unigram score's evidence)."""
    counts = dict.fromkeys(pieces, 0)
    for text in _sentences():
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            for piece in pieces:
                counts[piece] += word.count(piece)
    return counts


def tiny_tokenizer(family: str) -> Any:
    import transformers

    algorithm, specials = _TOKENIZERS[family]
    cls = {
        "bert": transformers.BertTokenizer,
        "distilbert": transformers.DistilBertTokenizer,
        "electra": transformers.ElectraTokenizer,
        "mpnet": transformers.MPNetTokenizer,
        "roberta": transformers.RobertaTokenizer,
        "xlm-roberta": transformers.XLMRobertaTokenizer,
        "albert": transformers.AlbertTokenizer,
        "deberta-v2": transformers.DebertaV2Tokenizer,
    }[family]
    trained = dict(_trained(algorithm, specials))
    if algorithm == "wordpiece":
        trained["vocab"] = dict(trained["vocab"])
    elif algorithm == "bpe":
        trained["vocab"], trained["merges"] = dict(trained["vocab"]), list(trained["merges"])
    else:
        trained["vocab"] = list(trained["vocab"])
    if family == "deberta-v2":
        trained["unk_id"] = specials.index("[UNK]")
    return cls(**trained, model_max_length=POSITIONS)


def tiny_config(family: str, vocab_size: int, pad_token_id: int, *, num_labels: int = 2) -> Any:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "num_labels": num_labels,
    }
    if family == "distilbert":  # DistilBERT names its sizes differently
        return transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=POSITIONS, **common
        )
    sizes: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": POSITIONS,
    }
    if family == "bert":
        return transformers.BertConfig(**sizes, **common)
    if family in ("roberta", "xlm-roberta", "mpnet"):
        # Position ids start after padding_idx, so these tables need two more rows.
        sizes["max_position_embeddings"] = POSITIONS + 2
        cls = {
            "roberta": transformers.RobertaConfig,
            "xlm-roberta": transformers.XLMRobertaConfig,
            "mpnet": transformers.MPNetConfig,
        }[family]
        extra = {} if family == "mpnet" else {"type_vocab_size": 1}
        return cls(**sizes, **extra, bos_token_id=0, eos_token_id=2, **common)
    if family == "albert":
        return transformers.AlbertConfig(embedding_size=16, **sizes, **common)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=16, **sizes, **common)
    if family == "deberta-v2":
        # DeBERTa-v3's layout: relative attention with shared keys, no absolute positions.
        return transformers.DebertaV2Config(
            **sizes,
            relative_attention=True,
            position_buckets=32,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
            type_vocab_size=0,
            **common,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")


def tiny_hf_folder(
    family: str,
    classifier: bool,
    path: Path,
    *,
    seed: int = 0,
    num_labels: int = 2,
    pooling: str | None = None,
    initializer_range: float | None = None,
) -> Path:
    """Save a tiny random ``family`` encoder (or ``*ForSequenceClassification``) into ``path``.

    At transformers' default ``initializer_range`` (0.02) a tiny random classifier gives
    nearly the same logits for every input; 0.3 makes its predictions depend on the text.

    ``pooling`` (encoders only): one of :data:`POOLING_MODES`, optionally followed by
    ``+normalize`` (e.g. ``"cls+normalize"``), writes a sentence-transformers layout.
    """
    import transformers

    tokenizer = tiny_tokenizer(family)
    config = tiny_config(family, len(tokenizer), tokenizer.pad_token_id, num_labels=num_labels)
    if initializer_range is not None:
        config.initializer_range = initializer_range
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    torch.manual_seed(seed)
    model = auto.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    if pooling is not None:
        write_pooling(path, pooling, hidden=32)
    return path


def write_pooling(path: Path, pooling: str, *, hidden: int) -> None:
    """Write sentence-transformers' modules.json, 1_Pooling/config.json and 2_Normalize."""
    mode, _, tail = pooling.partition("+")
    if mode not in POOLING_MODES or tail not in ("", "normalize"):
        raise ValueError(f"pooling {pooling!r}: give one of {POOLING_MODES}, optionally with '+normalize'")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if tail:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": POSITIONS, "do_lower_case": False})
    )
    (path / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    config = {"word_embedding_dimension": hidden, **{flag: name == mode for name, flag in flags.items()}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))
