"""report.html's charts, `presso report DIR` and `presso compare DIR...`, on hand-made reports."""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET

import pytest

from presso.cli.main import main
from presso.report.html import render_html, summary_line
from presso.report.schema import Report, Search, SearchTrial
from presso.report.svg import Series, bar_chart, histogram, line_chart, log_ticks, nice_ticks, scatter_chart

# ------------------------------------------------------------------ a realistic report


def make_report(
    *,
    name="DigitsCNN",
    recipe="prune-kmeans",
    metric="accuracy",
    samples=True,
    layers=True,
    steps=4,
    stored=True,
    callable_teacher=False,
    cpu="Intel(R) Xeon(R) Processor",
    quality=0.9742,
    latency=0.0171,
) -> Report:
    """A report like `presso compress` writes for a prune -> kmeans -> pack recipe."""
    conv = [f"/features/features.{i}/Conv" for i in (0, 3, 6)]
    fc = ["/classifier/classifier.1/Gemm", "/classifier/classifier.4/Gemm"]
    base_sizes = dict(zip(conv + fc, [1_234, 18_560, 73_984, 33_024, 650], strict=True))
    comp_sizes = {n: b // 4 for n, b in base_sizes.items()}
    comp_sizes.pop(fc[1])
    comp_sizes[fc[1] + "_codebook"] = 402
    prune_rows = [
        {
            "layer": f"features.{i}",
            "node": n,
            "parameters": p,
            "zeros": p // 2,
            "sparsity": 0.5,
            "drop@0.25": 0.0,
            "drop@0.5": d / 4,
            "drop@0.75": d / 2,
            "drop@0.9": d,
        }
        for i, (n, p, d) in enumerate(zip(conv, [288, 4608, 18432], [0.004, 0.03, 0.12], strict=True))
    ]
    kmeans_rows = [
        {
            "node": n,
            "op": "Conv",
            "precision": "kmeans 16 values",
            "granularity": "per layer",
            "parameters": 100 * (i + 1),
            "relative_error": 0.01 * (i + 1),
        }
        for i, n in enumerate(conv)
    ]
    quant_rows = [
        {"node": n, "op": "Gemm", "precision": "int8", "sensitivity": s, "relative_error": 0.004}
        for n, s in zip(fc, [0.0012, -0.0004], strict=True)
    ]

    def figures(size, lat, q, peak, stored_bytes=None):
        return {
            "runtime": "ONNX Runtime fp32",
            "size_bytes": size,
            "parameters": None if size is None else 38_282,
            "latency_ms": {
                "p50": lat,
                "p95": lat * 1.3,
                "batch": 1,  # a long right tail, as measured
                "samples": [lat * (0.93 + 0.6 * (((k * 37) % 100) / 100) ** 4) for k in range(200)]
                if samples
                else [],
            },
            "throughput_per_s": 180_000.0,
            "throughput_batch": 64,
            "peak_memory_mb": peak,
            "metrics": {metric: q, "agreement": 0.99},
            "stored_bytes": stored_bytes,
        }

    base = figures(None if callable_teacher else 154_245, 0.0266, 0.9781, 11.6)
    comp = figures(43_929, latency, quality, 11.4, 9_876 if stored else None)
    comp["runtime"] = "ONNX Runtime kmeans (v)"
    all_steps = [
        {
            "name": "baseline",
            "technique": None,
            "quality": 0.9781,
            "size_bytes": base["size_bytes"],
            "latency_ms": 0.0266,
        },
        {
            "name": "1 prune",
            "technique": "prune",
            "quality": 0.9761,
            "size_bytes": 154_245,
            "latency_ms": 0.0262,
        },
        {
            "name": "2 quantize-int8",
            "technique": "int8",
            "quality": 0.9781,
            "size_bytes": 154_245,
            "latency_ms": None,
            "skipped": True,
        },
        {
            "name": "3 kmeans",
            "technique": "kmeans",
            "quality": quality,
            "size_bytes": 43_929,
            "latency_ms": latency,
            "stored_bytes": 9_876 if stored else None,
        },
    ][:steps]
    stage = {"chosen": "v", "variants": [{"variant": "v", "calibration_drop": 0.001, "note": ""}]}
    return Report.model_validate(
        {
            "presso_version": "0.1.0",
            "created": "2026-11-25T00:10:19+00:00",
            "task": "classification",
            "recipe": {
                "presso_recipe": 1,
                "name": recipe,
                "stages": [{"technique": "prune"}, {"technique": "kmeans"}],
            },
            "model": {
                "name": name,
                "source": "callable" if callable_teacher else "nn.Module",
                "kind": "callable" if callable_teacher else "torch",
            },
            "data": {
                "source": "scikit-learn load_digits (held-out rows)",
                "rows": 719,
                "has_labels": True,
                "split": {
                    "method": "seeded random permutation",
                    "seed": 0,
                    "calibration_fraction": 0.3,
                    "calibration_rows": 216,
                    "evaluation_rows": 503,
                    "note": "held-out rows only",
                },
            },
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
            "budget": {
                "primary_metric": metric,
                "max_drop": 0.01,
                "baseline": 0.9781,
                "compressed": quality,
                "drop": 0.9781 - quality,
                "passed": 0.9781 - quality <= 0.01,
            },
            "baseline": base,
            "compressed": comp,
            "ratios": {
                "size": None if callable_teacher else 3.511,
                "latency_speedup": 1.556,
                "throughput": 1.0,
            },
            "reference": {"pytorch_fp32_latency_ms": None},
            "machine": {"cpu": cpu, "avx2": True, "threads": 2, "onnxruntime": "1.32.0"},
            "stages": [
                {"technique": "prune", **stage, "layers": prune_rows if layers else []},
                {
                    "technique": "int8",
                    "chosen": None,
                    "skipped": True,
                    "layers": quant_rows if layers else [],
                },
                {"technique": "kmeans", **stage, "layers": kmeans_rows if layers else []},
            ],
            "notes": ["The compressed model is 1.56x faster than ONNX Runtime fp32 at batch 1."],
            "steps": all_steps,
            "layer_sizes": {
                "baseline": [{"node": n, "op": "Conv", "bytes": b} for n, b in base_sizes.items()],
                "compressed": [{"node": n, "op": "Conv", "bytes": b} for n, b in comp_sizes.items()],
            }
            if layers
            else {},
            "stored": {
                "file": "model.packed",
                "bytes": 9_876,
                "weights_bytes": 7_000,
                "graph_bytes": 2_500,
                "fp32_weights_bytes": 153_128,
                "weights_ratio": 21.875,
                "codecs": {"kmeans4+rans": 3, "raw": 2},
            }
            if stored
            else None,
        }
    )


def plots(page: str) -> dict[str, ET.Element]:
    """Every chart in a page, parsed as XML, by its data-plot name."""
    found = {}
    for chunk in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        root = ET.fromstring(chunk)
        found[root.get("data-plot")] = root
    return found


_COORDS = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height")


def check_geometry(root: ET.Element) -> None:
    """Every coordinate is a finite number inside the viewBox."""
    _, _, w, h = (float(v) for v in root.get("viewBox").split())
    for el in root.iter():
        for attr in _COORDS:
            if el.get(attr) is not None and el is not root:
                v = float(el.get(attr))
                assert math.isfinite(v) and -0.01 <= v <= max(w, h) + 0.01, (el.tag, attr, v)
        numbers = re.findall(r"-?[\d.]+(?:e-?\d+)?", (el.get("points") or "") + (el.get("d") or ""))
        for v in map(float, numbers):
            assert math.isfinite(v) and -0.01 <= v <= max(w, h) + 0.01, (el.tag, v)
    assert "nan" not in ET.tostring(root, encoding="unicode").lower()


def tooltips(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("title")]


def write_artifact(folder, report: Report):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=2))
    (folder / "model.onnx").write_bytes(b"not a real model: these tests only read report.json")
    return folder


# ------------------------------------------------------------------ the page

EXPECTED_PLOTS = {
    "steps-size",
    "steps-latency",
    "steps-quality",
    "layer-sizes",
    "sensitivity-1",
    "sensitivity-2",
    "sensitivity-3",
    "latency",
}


def test_every_plot_is_present_and_well_formed():
    page = render_html(make_report())
    found = plots(page)
    assert set(found) == EXPECTED_PLOTS
    for name, root in found.items():
        assert root.get("class") == "plot" and root.get("aria-label"), name
        assert root.find("title") is not None and root.find("title").text, name
        check_geometry(root)
    for section in (
        "summary",
        "steps",
        "layer-sizes",
        "sensitivity",
        "latency",
        "storage",
        "variants",
        "layers",
        "data",
        "machine",
        "recipe",
    ):
        assert f"<section id='{section}'>" in page and f"href='#{section}'" in page
    # What the page showed before the plots is still there.
    assert "Baseline vs compressed" in page and "Layers after stage 1 (prune)" in page and "drop@0.9" in page
    assert "badge pass" in page and "3.5x smaller (15.6x packed), 1.6x faster, accuracy -0.4 points" in page


def test_tooltips_and_axes_carry_the_values():
    found = plots(render_html(make_report()))
    assert "/features/features.0/Conv \u00b7 baseline: 1,234 bytes" in tooltips(found["layer-sizes"])
    assert "/features/features.0/Conv \u00b7 compressed: 308 bytes" in tooltips(found["layer-sizes"])
    assert "3 kmeans: 0.9742" in tooltips(found["steps-quality"])
    assert "2 quantize-int8: 0.9781 (skipped)" in tooltips(found["steps-quality"])
    assert "budget 0.9681: 0.9681" in tooltips(found["steps-quality"])
    assert "3 kmeans \u00b7 stored (packed): 9,876 bytes" in tooltips(found["steps-size"])
    assert "baseline p50: 0.0266 ms" in tooltips(found["latency"])
    assert "features.2 \u00b7 sparsity 0.9: 0.12" in tooltips(found["sensitivity-1"])
    assert "/classifier/classifier.4/Gemm: -0.0004" in tooltips(found["sensitivity-2"])
    texts = {t.text for t in found["layer-sizes"].iter("text")}
    assert "stored bytes (kB)" in texts and {"0", "20", "40", "60", "80"} <= texts


def test_captions_say_what_was_measured():
    page = html.unescape(render_html(make_report()))
    assert "this stage measured no sensitivity, so this shows each layer's relative weight error" in page
    assert "with only that layer quantized" in page and "with only that layer pruned to each sparsity" in page
    assert "4 of 5 baseline layers matched by node name" in page
    assert "kmeans4+rans (3 tensors), raw (2 tensors)" in page and "21.88x smaller than fp32" in page


def test_page_is_self_contained():
    page = render_html(make_report())
    assert page.startswith("<!DOCTYPE html>")
    for banned in ("<script", "http://", "https://", "<link", "@import", "url(", "<img", "<iframe"):
        assert banned not in page.lower(), banned


@pytest.mark.parametrize(
    "kwargs, absent, sentence",
    [
        ({"samples": False}, {"latency"}, "This report has no latency samples"),
        (
            {"layers": False},
            {"layer-sizes", "sensitivity-1", "sensitivity-2", "sensitivity-3"},
            "No stage of this run reported a per-layer sensitivity or weight error",
        ),
        (
            {"steps": 0},
            {"steps-size", "steps-latency", "steps-quality"},
            "This report has no per-stage steps",
        ),
        ({"steps": 1}, set(), "The model after each stage"),
        ({"stored": False}, set(), "This run wrote no packed storage file"),
        ({"callable_teacher": True}, set(), "the baseline's size is unknown"),
        ({"quality": 0.95}, set(), "badge fail"),
    ],
)
def test_edge_cases_render(kwargs, absent, sentence):
    page = render_html(make_report(**kwargs))
    found = plots(page)
    assert set(found) == EXPECTED_PLOTS - absent
    for root in found.values():
        check_geometry(root)
    assert sentence in html.unescape(page)


def test_a_callable_teacher_with_only_its_baseline_step_gets_a_sentence_not_an_empty_chart():
    page = render_html(make_report(callable_teacher=True, steps=1))
    assert "steps-size" not in plots(page) and "No step has a known size" in page
    assert {"steps-latency", "steps-quality"} <= set(plots(page))


def test_summary_line_for_a_callable_teacher_and_a_slower_model():
    report = make_report(callable_teacher=True, latency=0.04, quality=0.9781)
    assert summary_line(report) == "1.5x slower, accuracy unchanged"


def test_a_search_section_leaves_trials_without_a_latency_or_size_out_of_those_charts():
    def trial(number, drop, latency, size, **kwargs):
        return SearchTrial(
            number=number,
            state="complete",
            summary=f"slim ratio 0.{number}",
            drop=drop,
            latency_ms=latency,
            size_bytes=size,
            **kwargs,
        )

    search = Search(
        study="s",
        storage="sqlite:///study.db",
        sampler="tpe",
        pick="fastest",
        picked=0,
        objectives=["latency_ms", "size_bytes"],
        constraints={"max_drop": 0.01},
        space={"slim.ratio": [0.3, 0.5]},
        trials=[
            trial(0, 0.002, 0.02, 40_000, feasible=True, on_front=True),
            trial(1, 0.004, None, 30_000, feasible=True),  # its timing failed
            trial(2, 0.001, 0.05, None, feasible=True),  # its size is unknown
            trial(3, 0.02, 0.01, 2_000_000),  # outside the budget; sizes span decades: a log axis
            SearchTrial(number=4, state="pruned", summary="int8", reason="broke the budget"),
        ],
        seconds=12.0,
    )
    page = render_html(make_report().model_copy(update={"search": search}))
    found = plots(page)
    for name in ("search-latency", "search-size"):
        check_geometry(found[name])
    latency, size = tooltips(found["search-latency"]), tooltips(found["search-size"])
    assert any(t.startswith("#2 \u00b7") for t in latency) and not any(t.startswith("#1 ") for t in latency)
    assert any(t.startswith("#1 \u00b7") for t in size) and not any(t.startswith("#2 ") for t in size)
    assert "All 5 trials" in page


# ------------------------------------------------------------------ the charts on their own


@pytest.mark.parametrize(
    "lo, hi, ticks",
    [
        (0, 100, [0, 20, 40, 60, 80, 100]),
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0, 1234, [0, 500, 1000, 1500]),
        (0.9681, 0.9781, [0.965, 0.970, 0.975, 0.980]),
        (0.013, 0.047, [0.01, 0.02, 0.03, 0.04, 0.05]),
        (-0.0004, 0.0012, [-0.0005, 0, 0.0005, 0.001, 0.0015]),
        (0, 0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (None, float("nan"), [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    ],
)
def test_nice_ticks(lo, hi, ticks):
    assert nice_ticks(lo, hi) == pytest.approx(ticks)


def test_nice_ticks_cover_a_single_value_and_log_ticks_span_decades():
    ticks = nice_ticks(5, 5)
    assert ticks[0] < 5 < ticks[-1] and len(ticks) <= 7
    assert log_ticks(0.015, 0.03) == pytest.approx([0.01, 0.02, 0.05, 0.1])
    assert log_ticks(20, 3e6)[0] == 10 and log_ticks(20, 3e6)[-1] == 1e7


def _parse(chart: str) -> ET.Element:
    root = ET.fromstring(chart)
    check_geometry(root)
    return root


def test_charts_survive_awkward_data():
    long = "encoder/layer.11/attention/self/query/MatMul_with_a_very_long_name"
    awkward = [
        bar_chart("one", "one bar", ["a"], [Series("s", [5])], value_label="v"),
        bar_chart("equal", "equal", ["a", "b"], [Series("s", [3, 3]), Series("t", [3, 3])], value_label="v"),
        bar_chart("zeros", "zeros", ["a", "b"], [Series("s", [0, 0])], value_label="v", unit="bytes"),
        bar_chart("none", "none", ["a", "b", "c"], [Series("s", [None, float("nan"), 2])], value_label="v"),
        bar_chart("empty", "empty", [], [Series("s", [])], value_label="v"),
        bar_chart("vertical", "v", ["a", long], [Series("s", [0, None])], value_label="v", horizontal=False),
        line_chart("point", "one point", [Series("s", [0.5], x=[0.1])], x_label="x", y_label="y"),
        line_chart(
            "cats", "one category", [Series("s", [1.0])], x_label="x", y_label="y", categories=["only"]
        ),
        line_chart(
            "gaps",
            "gaps",
            [Series("s", [None, 1, None, 2], x=[0, 1, 2, 3])],
            x_label="x",
            y_label="y",
            step=True,
        ),
        scatter_chart(
            "scatter",
            "one",
            [Series("s", [0.9], x=[0.0], labels=["p"])],
            x_label="x",
            y_label="y",
            log_x=True,
        ),
        scatter_chart(
            "scatter2", "same", [Series("s", [1, 1], x=[2, 2], labels=["a", "b"])], x_label="x", y_label="y"
        ),
        histogram("hist", "equal", [Series("s", [0.02] * 50), Series("t", [])], x_label="t", unit="ms"),
        histogram("nohist", "none", [Series("s", [])], x_label="t"),
    ]
    for chart in awkward:
        _parse(chart)
    assert "no samples" in awkward[-1] and "no data to plot" in awkward[4]


def test_long_labels_are_truncated_with_the_full_name_in_the_tooltip():
    long = "encoder/layer.11/attention/self/query/MatMul_with_a_very_long_name"
    root = _parse(bar_chart("long", "t", [long], [Series("s", [1_234])], value_label="v", unit="bytes"))
    texts = [t for t in root.iter("text") if t.find("title") is not None]
    assert any(
        t.find("title").text == long and long not in "".join(t.itertext()).replace(long, "", 1) for t in texts
    )
    assert f"{long}: 1,234 bytes" in tooltips(root)


def test_hundreds_of_layers_are_capped_with_an_other_bar():
    names = [f"layer{i}" for i in range(300)]
    root = _parse(
        bar_chart("many", "t", names, [Series("s", list(range(300)))], value_label="v", max_bars=30)
    )
    bars = [r for r in root.iter("rect") if r.find("title") is not None]
    assert len(bars) == 30
    assert f"other (271 layers): {sum(range(271)):,}" in tooltips(root)
    assert "layer299: 299" in tooltips(root) and not any(t.startswith("layer5:") for t in tooltips(root))


def test_text_is_escaped():
    chart = bar_chart("esc<", 'a <b> & "c"', ["<script>&"], [Series("s'", [1])], value_label="v <")
    root = _parse(chart)
    assert "<script>" not in chart and root.get("data-plot") == "esc<"
    assert "<script>& \u00b7 s'" not in tooltips(root) and "<script>&: 1" in tooltips(root)


# ------------------------------------------------------------------ the commands


def test_presso_report_rewrites_report_html(tmp_path, capsys):
    art = write_artifact(tmp_path / "art", make_report())
    (art / "report.html").write_text("stale")
    assert main(["report", str(art), "--quiet"]) == 0
    page = (art / "report.html").read_text()
    assert set(plots(page)) == EXPECTED_PLOTS
    assert [p.name for p in art.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(art), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert Report.model_validate_json(captured.out) == make_report()
    assert "DigitsCNN" in captured.err and out.is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"presso_version": "0.1.0"}', "is not a presso report"),
        (None, "has no report.json"),
    ],
)
def test_presso_report_refuses_a_bad_report_json(tmp_path, capsys, content, message):
    art = tmp_path / "art"
    art.mkdir()
    if content is not None:
        (art / "report.json").write_text(content)
    assert main(["report", str(art)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(art) in err and len(err.strip().splitlines()) == 1
    assert not (art / "report.html").exists()


def test_presso_compare_writes_one_page(tmp_path, capsys, monkeypatch):
    a = write_artifact(tmp_path / "runs" / "digits-prune", make_report())
    b = write_artifact(
        tmp_path / "runs" / "digits-int8",
        make_report(recipe="int8", quality=0.95, stored=False, cpu="AMD EPYC 9654"),
    )
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    page = (tmp_path / "compare.html").read_text()
    found = plots(page)
    assert set(found) == {"compare-latency", "compare-size"}
    for root in found.values():
        check_geometry(root)
    labels = "digits-prune \u00b7 prune-kmeans", "digits-int8 \u00b7 int8"
    assert all(lab in page for lab in labels)
    assert sum(t == "baseline" for t in (e.text for e in found["compare-latency"].iter("text"))) == 1
    assert "different machines (cpu differ)" in page and "<script" not in page and "http" not in page
    assert "class='pass'>PASS" in page and "class='fail'>FAIL" in page
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [r["folder"] for r in result["results"]] == ["digits-prune", "digits-int8"]
    assert result["results"][1]["passed"] is False and "different machines" in captured.err


def test_presso_compare_draws_each_baseline_when_models_differ(tmp_path, capsys):
    a = write_artifact(tmp_path / "a", make_report())
    b = write_artifact(tmp_path / "b", make_report(name="OtherNet", metric="r2"))
    out = tmp_path / "c.html"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text()
    assert "baseline \u00b7 a" in page and "baseline \u00b7 b" in page
    assert "different primary metrics (accuracy, r2)" in page
    assert "different primary metrics" in capsys.readouterr().out


def test_presso_compare_refuses_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    a = write_artifact(tmp_path / "a", make_report())
    (tmp_path / "notes").mkdir()
    assert main(["compare", str(a), str(tmp_path / "notes"), "--out", str(tmp_path / "c.html")]) == 2
    err = capsys.readouterr().err
    assert "notes" in err and "not a presso artifact folder" in err and not (tmp_path / "c.html").exists()
    assert main(["compare", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("command", ["report", "compare"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"presso {command} " in capsys.readouterr().out.split("examples:")[1]


def test_a_relative_budget_is_reported_in_its_own_terms():
    from types import SimpleNamespace

    import numpy as np

    from presso.data.dataset import Dataset
    from presso.report.build import budget, changes
    from presso.report.table import budget_line, comparison_rows

    def rows(n):
        return Dataset({"x": np.zeros((n, 1), np.float32)}, target=np.arange(n) % 2)

    run = SimpleNamespace(evaluation=rows(40), calibration=rows(20))
    b = budget("mae", 0.01, 2.0, 2.03, run)
    assert (b.kind, b.higher_is_better, b.passed) == ("relative", False, False)
    assert b.drop == pytest.approx(0.015) and b.limit == pytest.approx(2.02)
    assert budget_line(b) == "mae: 2.0000 -> 2.0300 (relative increase +1.50%, budget 1.00%)"
    ok = budget("accuracy", 0.01, 0.9781, 0.9722, run)
    assert (
        ok.passed
        and ok.limit == pytest.approx(0.9681)
        and ok.one_row_drop == {"held-out": 0.025, "calibration": 0.05}
    )
    assert budget_line(ok) == "accuracy: 0.9781 -> 0.9722 (drop 0.0059, budget 0.01)"

    report = make_report()
    base = {"mae": 2.0, "rmse": 4.0, "r2": 0.9972, "max_abs_diff": 0.0}
    comp = {"mae": 2.03, "rmse": 4.4, "r2": 0.9933, "max_abs_diff": 0.02}
    report = report.model_copy(
        update={
            "budget": b,
            "changes": changes(base, comp),
            "baseline": report.baseline.model_copy(update={"metrics": base}),
            "compressed": report.compressed.model_copy(update={"metrics": comp}),
        }
    )
    rows = {r[0]: r[3] for r in comparison_rows(report)}
    assert rows["mae (budget)"] == "+0.0300 (+1.5%)" and rows["rmse"] == "+0.4000 (+10.0%)"
    assert rows["r2"] == "-0.0039 (-0.4%)" and rows["max_abs_diff"] == "+0.0200"  # no relative to ~0
    assert report.changes["rmse"].relative == pytest.approx(0.1)
    assert summary_line(report).endswith("mae +1.5%")
    page = render_html(report)
    assert "relative increase of mae on held-out rows" in page and "over budget" in page
    assert (
        "the dashed line is the budget&#x27;s limit, 2.02" in page
        or "the dashed line is the budget's limit, 2.02" in page
    )
