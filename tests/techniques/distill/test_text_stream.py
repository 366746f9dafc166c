"""The text side of distillation: the docstring corpus, streamed train_data with cached
teacher outputs, length-bucketed batches, and a streamed distill run end to end."""

from __future__ import annotations

import platform
import textwrap
import tracemalloc

import numpy as np
import pytest
import torch
from hf_tiny import tiny_hf_folder, tiny_tokenizer
from torch import nn

import presso
from presso.data.sources import encode_texts
from presso.examples import corpus
from presso.examples.texts import all_stdlib_modules, stdlib_sentences
from presso.measure.bench import BenchSettings
from presso.techniques.distill import textstream
from presso.techniques.distill.textstream import open_text_stream, text_batches
from presso.train import FitSettings, fit
from presso.train.batches import LengthBuckets

QUICK = BenchSettings(rounds=2, round_seconds=0.02, throughput_batch=16)
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
SEQ_LEN = 64


# --- the corpus ---------------------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package whose import fails: the corpus must read it without importing."""
    pkg = tmp_path / "site" / "fakedocs"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent('''
        """The first module sentence has enough words to pass. Short one.

        A second paragraph sentence also has enough words here.
        """
        raise RuntimeError("imported")
        ''')
    )
    (pkg / "sub" / "tools.py").write_text(
        textwrap.dedent('''
        def f(x):
            """Return the value unchanged for every input given.

            Code like f(x) == 1 is never a sentence.
            """

        class Thing:
            """The first module sentence has enough words to pass. A thing that holds several values."""
        ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(corpus, "PACKAGES", {"fakedocs": "fakedocs"})
    return pkg


def test_corpus_reads_sources_without_importing_filters_and_dedups(fake_package):
    found = corpus.docstring_corpus(["fakedocs"])
    assert sorted(found) == [
        "A second paragraph sentence also has enough words here.",
        "A thing that holds several values.",
        "Return the value unchanged for every input given.",
        "The first module sentence has enough words to pass.",
    ]


def test_corpus_file_is_deterministic_and_disjoint_from_the_example_texts(fake_package):
    held = ["A thing that holds several values."]
    path = corpus.corpus_file("ex", held)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and held[0] not in lines
    again = corpus.docstring_corpus(["fakedocs"], held)
    assert again == lines  # same seed, same order
    assert corpus.corpus_file("ex", held) == path  # reused, keyed by versions and exclusions
    assert corpus.corpus_file("ex", []) != path


def test_corpus_reads_the_stdlib_without_its_tests_or_installed_packages(tmp_path, monkeypatch):
    lib = tmp_path / "python3.x"
    for folder, sentence in (
        ("", "The library module sentence has enough words to pass."),
        ("email", "A sentence of a stdlib subpackage with enough words."),
        ("test", "A test suite sentence that must not be read."),
        ("email/tests", "A nested test sentence that must not be read."),
        ("site-packages/other", "An installed package sentence that must not be read."),
    ):
        (lib / folder).mkdir(parents=True, exist_ok=True)
        (lib / folder / "mod.py").write_text(f'"""{sentence}"""\n')
    monkeypatch.setattr(corpus, "stdlib_folder", lambda: lib)
    monkeypatch.setattr(corpus, "PACKAGES", {corpus.STDLIB: "python"})
    assert sorted(corpus.docstring_corpus([corpus.STDLIB])) == [
        "A sentence of a stdlib subpackage with enough words.",
        "The library module sentence has enough words to pass.",
    ]
    # keyed by Python's version, like a package by its own
    assert corpus.installed_packages() == [(corpus.STDLIB, platform.python_version())]


# --- streaming ----------------------------------------------------------------------------


def _teacher(calls: list):
    """A deterministic 'encoder': masked mean of a fixed random embedding of the ids."""
    table = np.random.default_rng(0).normal(size=(4096, 8)).astype(np.float32)

    def run(inputs):
        calls.append(len(inputs["input_ids"]))
        ids, mask = inputs["input_ids"], inputs["attention_mask"].astype(np.float32)
        return (table[ids % 4096] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    return run


def _lines(n: int, seed: int = 1) -> list[str]:
    pool = stdlib_sentences(4000, seed=seed, modules=all_stdlib_modules())
    return [pool[i % len(pool)] + ("" if i < len(pool) else f" Copy {i}.") for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer("bert")


def _open(path, tokenizer, teacher, evaluation=None, cache=None):
    return open_text_stream(path, tokenizer, NAMES, SEQ_LEN, teacher, evaluation, cache)


def test_streamed_outputs_match_the_teacher_and_are_cached(tmp_path, tokenizer):
    texts = _lines(300)
    path = tmp_path / "train.txt"
    path.write_text(
        "\n".join(texts[:150]) + "\n\n   \n" + "\n".join(texts[150:]) + "\n"
    )  # blank lines skipped
    calls: list[int] = []
    heldout = encode_texts(texts[:7], NAMES, tokenizer, SEQ_LEN)
    s = _open(path, tokenizer, _teacher(calls), heldout, tmp_path / "cache")
    assert s.n_lines == 300 and s.n_heldout == 7 and list(s.keep[:3]) == [7, 8, 9] and not s.cached
    assert s.texts(np.array([299, 0])) == [texts[299], texts[0]]
    padded = _teacher([])(encode_texts(texts, NAMES, tokenizer, SEQ_LEN))  # padded to seq_len at once
    np.testing.assert_allclose(s.teacher, padded, atol=1e-5)  # labelled at each batch's own length
    assert sum(calls) == 2 + 300 and max(calls) <= textstream.TEACHER_BATCH

    calls.clear()
    again = _open(path, tokenizer, _teacher(calls), heldout, tmp_path / "cache")
    assert again.cached and calls == [2] and isinstance(again.teacher, np.memmap)  # the probe only
    np.testing.assert_array_equal(again.teacher, s.teacher)

    def changed(inputs):
        return _teacher([])(inputs) * 1.01

    other = _open(path, tokenizer, changed, heldout, tmp_path / "cache")
    assert not other.cached and other.cache_file != s.cache_file
    np.testing.assert_allclose(other.teacher, s.teacher * 1.01, rtol=1e-5)


def test_streaming_memory_grows_by_the_line_index_only(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(textstream, "CHUNK", 256)
    peaks = {}
    for n in (1000, 10000):
        path = tmp_path / f"train{n}.txt"
        path.write_text("\n".join(_lines(n)) + "\n")
        tracemalloc.start()
        s = _open(path, tokenizer, _teacher([]), None, tmp_path / "cache")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert s.n_lines == n
    # 9000 more lines cost at most ~60 bytes each (offsets, lengths, line numbers, with the
    # arrays' growth), where tokens padded to 64 would cost 1.5 KB a line.
    assert peaks[10000] - peaks[1000] < 9000 * 60, peaks
    assert peaks[10000] < 10000 * SEQ_LEN * 8 * 3 / 4, peaks


# --- length-bucketed batches --------------------------------------------------------------


def test_length_buckets_cover_every_row_once_and_vary_by_seed():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    buckets = LengthBuckets(lengths, lambda rows: ({}, rows), batch_size=16, window=8)
    first = buckets.batch_rows(torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(1003))
    assert max(len(b) for b in first) == 16
    same = buckets.batch_rows(torch.Generator().manual_seed(0))
    other = buckets.batch_rows(torch.Generator().manual_seed(1))
    assert all((a == b).all() for a, b in zip(first, same, strict=True))
    assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(first, other, strict=True))
    # sorted within windows: the padding a batch needs is a fraction of random batching's
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in first])
    assert spread < 8, spread


def test_text_batches_pad_each_batch_to_its_own_longest_text(tmp_path, tokenizer):
    texts = _lines(400)
    path = tmp_path / "train.txt"
    path.write_text("\n".join(texts[40:]) + "\n")
    rows = encode_texts(texts[:40], NAMES, tokenizer, SEQ_LEN)
    teacher_fn = _teacher([])
    s = _open(path, tokenizer, teacher_fn, None, tmp_path / "cache")
    source = text_batches(
        s, rows, teacher_fn(rows), None, tokenizer, SEQ_LEN, 16, lambda t, y: t, no_label=-1
    )
    assert len(source) == 400
    seen, padded, real = 0, 0, 0
    for inputs, targets in source.epoch(torch.Generator().manual_seed(0)):
        lengths = inputs["attention_mask"].sum(1)
        assert inputs["input_ids"].shape[1] == lengths.max()  # padded to its own longest
        # each row's targets are the teacher's outputs on that row, whatever its padding
        np.testing.assert_allclose(targets, teacher_fn(inputs), atol=1e-5)
        seen += len(targets)
        padded, real = padded + inputs["input_ids"].size, real + int(lengths.sum())
    assert seen == 400
    assert padded / real < 1.15  # padded to seq_len every row would be ~2x
    assert 400 * SEQ_LEN / real > 1.4


class _MeanEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4096, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask.unsqueeze(-1).float()
        return self.out((self.embed(input_ids) * mask).sum(1) / mask.sum(1))


def test_a_fit_from_batches_resumes_exactly(tmp_path, tokenizer, one_thread):
    texts = _lines(200)
    path = tmp_path / "train.txt"
    path.write_text("\n".join(texts) + "\n")
    teacher_fn = _teacher([])
    s = _open(path, tokenizer, teacher_fn, None, tmp_path / "cache")
    rows = encode_texts(texts[:8], NAMES, tokenizer, SEQ_LEN)
    val = (rows, teacher_fn(rows))

    def source():
        empty = {k: v[:0] for k, v in rows.items()}
        return text_batches(
            s, empty, np.zeros((0, 8), np.float32), None, tokenizer, SEQ_LEN, 32, lambda t, y: t, -1
        )

    settings = FitSettings(epochs=3, lr=0.01, seed=0, patience=None)
    loss = nn.functional.mse_loss
    torch.manual_seed(0)
    whole = _MeanEmbed()
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    report = fit(whole, source(), val, loss, settings=settings, input_names=NAMES)
    assert report.epochs_run == 3 and report.history[-1]["val_score"] > report.history[0]["val_score"]

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    parted = _MeanEmbed()
    parted.load_state_dict(start)
    ckpt = tmp_path / "fit.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(
            parted,
            source(),
            val,
            loss,
            settings=settings,
            input_names=NAMES,
            on_epoch=stop_after_first,
            checkpoint=ckpt,
        )
    resumed = fit(parted, source(), val, loss, settings=settings, input_names=NAMES, checkpoint=ckpt)
    assert resumed.resumed_from == 1
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(parted.state_dict()[k], v, rtol=0, atol=0)


# --- end to end ---------------------------------------------------------------------------


def test_distill_on_a_streamed_text_file_improves_the_student(tmp_path):
    from presso.data.sources import from_texts
    from presso.model.huggingface import load_hf_folder

    folder = tiny_hf_folder("bert", False, tmp_path / "folder")
    texts = stdlib_sentences(120)
    extra = [t for t in _lines(1200, seed=2) if t not in set(texts)][:1000] + texts  # all 120 in the file
    (tmp_path / "extra.txt").write_text("\n".join(extra) + "\n")
    # The data's own training texts (as the minilm example brings its corpus), built on demand
    loaded = load_hf_folder(folder)
    data = from_texts(texts, loaded.input_names, loaded.tokenizer)
    data.train_texts = lambda: tmp_path / "extra.txt"

    def run(epochs, **options):
        r = presso.distill(
            str(folder),
            data,
            depth=1,
            width=1.0,
            init="random",  # a student the teacher's weights do not already make nearly exact
            epochs=epochs,
            lr=1e-3,
            bench=QUICK,
            max_drop=1.0,
            **options,
        )
        return r.report.compressed.metrics["mean_cosine"], r.report

    before, default = run(0)  # no train_data: the data's training texts
    after, report = run(3, train_data=str(tmp_path / "extra.txt"))
    n_eval = report.data["split"]["evaluation_rows"]
    for rep in (default, report):
        note = next(n for n in rep.notes if "streamed from extra.txt" in n)
        assert f"{1120 - n_eval} texts streamed from extra.txt at their own length ({n_eval} skipped" in note
    assert "teacher outputs cached" in note  # the second run read the first one's labels
    # measured: 0.066 from random weights, 0.984 after 3 epochs over the 1000 streamed lines
    assert before < 0.5 and after > 0.95, (before, after)
