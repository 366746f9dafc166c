"""The compress run's own peak memory: measured from the kernel's high-water mark, and shown
next to the fp32 model's size in the terminal summary and report.html."""

from __future__ import annotations

import html
import io

import numpy as np
from rich.console import Console
from test_report_html import make_report

from presso.measure.memory import process_peak_mb
from presso.report.html import render_html
from presso.report.schema import RunMemory
from presso.report.terminal import print_summary


def test_the_peak_counts_memory_held_a_moment_ago():
    before = process_peak_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    del block
    after = process_peak_mb()
    assert after >= before and after >= 64  # the peak outlives the memory itself


def test_the_summary_and_the_page_show_the_peak_against_the_fp32_model():
    report = make_report()
    report.run_memory = RunMemory(peak_rss_mb=1700.0, fp32_model_mb=417.7)
    out = io.StringIO()
    print_summary(report, Console(file=out, width=200))
    line = "this run's peak memory: 1,700 MiB RSS (4.1x the fp32 model's 417.7 MiB)"
    assert line in out.getvalue()
    assert html.escape(line) in render_html(report)
    # a small model: no ratio, which would only measure the interpreter and libraries
    report.run_memory = RunMemory(peak_rss_mb=541.0, fp32_model_mb=0.1)
    assert "x the fp32 model" not in render_html(report)
    assert "541 MiB RSS (the fp32 model is 0.1 MiB" in render_html(report)
    # reports written before the field existed still load and render without the line
    old = report.model_copy(update={"run_memory": None})
    assert "this run" not in render_html(old)
