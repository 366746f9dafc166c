"""A text model's report times the held-out texts at their real length, with the padded figure
beside it; other models' reports keep their shape. Timings are never compared with each
other here (a shared machine makes them noisy): only what was timed, and on what."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hf_tiny import tiny_hf_folder
from rich.console import Console

import presso
from presso.data.sources import from_texts
from presso.data.token_lengths import token_lengths
from presso.measure.bench import BenchSettings
from presso.measure.text_bench import HeldOutTexts, bench_text_calls
from presso.model.huggingface import load_hf_folder
from presso.recipe.schema import Recipe, Stage
from presso.report.html import render_html
from presso.report.length_chart import length_bins
from presso.report.schema import Latency
from presso.report.terminal import print_summary
from presso.runtime.session import run_session

SEQ_LEN = 48  # not the default 128: the limit must come from the run, not a default
TEXTS = [f"text {i} " + "goes on and " * (i % 11) + "stops." for i in range(36)] + ["word " * 300]
QUICK = BenchSettings(rounds=1, round_seconds=0.02, throughput_batch=8)
INT8 = Recipe(name="int8", stages=[Stage(technique="int8", options={"variants": ["dynamic"]})])


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_hf_folder("bert", False, tmp_path_factory.mktemp("text-latency") / "bert")


@pytest.fixture(scope="module")
def text_result(bert):
    return presso.compress(str(bert), INT8, data=TEXTS, seq_len=SEQ_LEN, max_drop=1.0, bench=QUICK)


def _possible_lengths(bert) -> set[int]:
    tokenizer = load_hf_folder(bert).tokenizer
    ids = tokenizer(TEXTS, truncation=True, max_length=SEQ_LEN)["input_ids"]
    return {len(i) for i in ids}


def test_text_report_times_real_lengths_and_the_padded_one(bert, text_result):
    report = text_result.report
    tokens = report.data["held_out_tokens"]
    assert report.data["max_tokens"] == SEQ_LEN
    assert tokens["texts"] == report.data["split"]["evaluation_rows"]
    assert tokens["median"] <= tokens["p95"] <= tokens["max"] <= SEQ_LEN
    possible = _possible_lengths(bert)
    for figures in (report.baseline, report.compressed):
        lat = figures.latency_ms
        assert lat.basis == "real length" and lat.tokens == tokens["median"]
        assert 0 < lat.p50 <= lat.p95
        assert len(lat.sample_tokens) == len(lat.samples) > 0
        assert set(lat.sample_tokens) <= possible  # every timed call ran one text as long as it is
        assert figures.throughput_batch == min(32, QUICK.throughput_batch)
        fixed = figures.fixed_length
        assert fixed is not None and fixed.tokens == SEQ_LEN
        assert fixed.latency_ms.basis == "fixed length" and fixed.latency_ms.tokens == SEQ_LEN
        assert 0 < fixed.latency_ms.p50 <= fixed.latency_ms.p95
        assert fixed.throughput_batch == QUICK.throughput_batch and fixed.throughput_per_s > 0
    assert {"latency_speedup_fixed_length", "throughput_fixed_length"} <= set(report.ratios)
    torch_ref = report.reference["pytorch_fp32_latency_ms"]
    assert torch_ref["basis"] == "real length" and torch_ref["fixed_length"]["tokens"] == SEQ_LEN
    median = f"{tokens['median']:g}"
    assert any(f"real length (median {median} tokens)" in n for n in report.notes)
    assert any(f"Padded to {SEQ_LEN} tokens" in n for n in report.notes)


def test_text_report_renders_the_lengths(text_result):
    report = text_result.report
    console = Console(width=200, record=True)
    print_summary(report, console)
    shown = console.export_text()
    median = f"{report.data['held_out_tokens']['median']:g}"
    assert f"latency p50 (batch 1, real length, median {median} tokens)" in shown
    assert f"latency p50 (batch 1, padded to {SEQ_LEN} tokens)" in shown
    page = render_html(report)
    chart = re.search(r"<svg[^>]*data-plot=\"latency-length\".*?</svg>", page, re.S)
    assert chart is not None
    ET.fromstring(chart.group(0))  # well-formed SVG
    assert "text length" in chart.group(0) and "tokens" in chart.group(0)
    assert f"limit {SEQ_LEN} (--seq-len)" in page


def test_max_tokens_round_trips_into_load(text_result, tmp_path):
    folder = text_result.save(tmp_path / "art")
    predictor = presso.load(folder)
    assert predictor.seq_len == SEQ_LEN
    # the 300-word text is cut where the run cut it: the output of its row as the run stored it
    stored = from_texts(TEXTS[-1:], predictor.input_names, predictor.tokenizer, SEQ_LEN).inputs
    np.testing.assert_allclose(
        predictor.predict([TEXTS[-1]]), run_session(predictor.session, stored), rtol=1e-5, atol=1e-6
    )


def test_token_lengths_count_the_truncated_texts(bert):
    tokenizer = load_hf_folder(bert).tokenizer
    rows = from_texts(TEXTS, ["input_ids", "attention_mask"], tokenizer, 16)
    whole = np.array([len(i) for i in tokenizer(TEXTS)["input_ids"]])
    cut = np.minimum(whole, 16)
    got = token_lengths(rows, tokenizer, 16)
    assert got == {
        "texts": len(TEXTS),
        "median": float(np.median(cut)),
        "p95": round(float(np.percentile(cut, 95)), 1),
        "max": 16,
        "truncated": int((whole > 16).sum()),
    }
    assert got["truncated"] > 1  # the longer sentences and the 300 words
    assert token_lengths(rows.subset(np.arange(3)), None, 16)["truncated"] is None  # no tokenizer: unknown
    assert token_lengths(from_texts(TEXTS, ["input_ids"], tokenizer, 16), tokenizer, 16) is None  # no mask


def test_text_calls_run_each_text_at_its_length():
    """Fake models that log what they were given: one text per batch-1 call, cut to its real
    length; every throughput pass runs every text once, in length-sorted batches cut to their longest."""
    lengths = np.array([3, 9, 1, 7, 7, 2, 5, 12, 4, 6])
    mask = (np.arange(12) < lengths[:, None]).astype(np.int64)
    inputs = {"input_ids": mask * 5, "attention_mask": mask}
    texts = HeldOutTexts.of(inputs)
    assert texts is not None and texts.max_tokens == 12
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

    def bind(name):
        def feed_call(feed):
            shape = feed["input_ids"].shape
            assert feed["attention_mask"].shape == shape
            return lambda: seen[name].append(shape)

        return feed_call

    out = bench_text_calls(
        {"a": bind("a"), "b": bind("b")}, texts, inputs, BenchSettings(rounds=2, round_seconds=0.001)
    )
    for name in ("a", "b"):
        lat = out[name]["latency_ms"]
        assert set(lat["sample_tokens"]) <= set(lengths.tolist()) and lat["tokens"] == 5.5
        assert lat["p50"] <= lat["p95"] and len(lat["samples"]) == len(lat["sample_tokens"])
        one_text = [w for b, w in seen[name] if b == 1 and w < 12]
        assert set(one_text) <= set(lengths.tolist())
        # a throughput pass at batch min(32, 10 rows): one batch of all ten, cut to the longest (12)
        assert out[name]["throughput_batch"] == 10 and (10, 12) in seen[name]
        assert (
            out[name]["fixed_length"]["tokens"] == 12 and out[name]["fixed_length"]["throughput_batch"] == 10
        )
    assert out["latency_only"] == {}


def test_length_bins_take_medians_per_band():
    lat = Latency(p50=1, p95=2, batch=1, samples=[1.0, 3.0, 2.0, 10.0, 12.0], sample_tokens=[4, 4, 4, 20, 20])
    assert length_bins(lat) == ([4.0, 20.0], [2.0, 11.0], [3, 2])
    many = Latency(p50=1, p95=2, batch=1, samples=list(range(100)), sample_tokens=list(range(100)))
    x, y, n = length_bins(many, bins=4)
    assert len(x) == 4 and sum(n) == 100 and x == y  # each band's median length and time
    assert length_bins(Latency(p50=1, p95=1, batch=1, samples=[1.0])) == ([], [], [])  # an older report


def test_non_text_report_keeps_its_shape(mlp_project):
    # the report's shape is checked, not fidelity: a budget both int8 kernels meet (where u8 x s8
    # products saturate, plain dynamic loses 0.06 of balanced accuracy here held out)
    report = presso.compress(
        mlp_project["model"], INT8, data=(mlp_project["x"], mlp_project["y"]), max_drop=1.0, bench=QUICK
    ).report
    for figures in (report.baseline, report.compressed):
        assert figures.latency_ms.basis is None and figures.latency_ms.sample_tokens == []
        assert figures.fixed_length is None
        assert len(figures.latency_ms.samples) > 0
    assert set(report.ratios) == {"size", "latency_speedup", "throughput"}
    assert "max_tokens" not in report.data and "held_out_tokens" not in report.data
    assert "latency-length" not in render_html(report)
    assert "basis" not in (report.reference["pytorch_fp32_latency_ms"] or {})


def test_a_model_that_must_run_padded_says_so(bert, monkeypatch):
    """A text model that cannot run cut rows (here: declared so) is timed on the stored rows,
    and the report says they were padded to the limit instead of implying real lengths."""
    from presso.measure import text_bench

    monkeypatch.setattr(text_bench, "length_free", lambda session: False)
    report = presso.compress(str(bert), INT8, data=TEXTS, seq_len=SEQ_LEN, max_drop=1.0, bench=QUICK).report
    for figures in (report.baseline, report.compressed):
        assert figures.latency_ms.basis == "fixed length" and figures.latency_ms.tokens == SEQ_LEN
        assert figures.fixed_length is None and figures.latency_ms.sample_tokens == []
    assert report.data["max_tokens"] == SEQ_LEN  # still text data: the limit is recorded
    assert any(f"on texts padded to {SEQ_LEN} tokens" in n for n in report.notes)
    assert "latency-length" not in render_html(report)


def test_compare_warns_when_texts_were_timed_differently():
    from test_report_html import make_report

    from presso.report.compare import Result, warnings

    old = make_report()  # a report written before text was timed at its real length
    lat = old.compressed.latency_ms.model_copy(update={"basis": "real length", "tokens": 21.0})
    new = old.model_copy(update={"compressed": old.compressed.model_copy(update={"latency_ms": lat})})
    assert warnings([Result("a", old), Result("b", old)]) == []
    (warned,) = warnings([Result("a", old), Result("b", new)])
    assert "rows as stored, real length, median 21 tokens" in warned and "not comparable" in warned
