"""Names a user chose (model, recipe, CPU strings, artifact names in a comparison) flow into
report.html and compare.html: whatever they hold, the pages show them as text, and in a
real headless Chromium no script they carry runs (any console message fails the test; the
browser test's own negative control shows such a message is caught)."""

from __future__ import annotations

from test_report_browser import _CONSOLE, chromium, screenshot  # noqa: F401  (chromium: a fixture)
from test_report_html import make_report

from presso.report.compare import Result, render_compare
from presso.report.html import render_html

# Each would log to the console if the page ran it; "presso-xss-N" names which one did.
HOSTILE = [
    "<script>console.log('presso-xss-1')</script>",
    '"><img src=x onerror="console.log(\'presso-xss-2\')">',
    "</title></style></svg><script>console.log('presso-xss-3')</script>",
    "<svg onload=console.log('presso-xss-4')>",
    "'; console.log('presso-xss-5'); '\n../../etc/passwd " + "x" * 300,
]


def _pages() -> dict[str, str]:
    a = make_report(name=HOSTILE[0] + HOSTILE[4], recipe=HOSTILE[1], cpu=HOSTILE[2])
    b = make_report(name=HOSTILE[3], recipe="int8", stored=False)
    return {
        "report": render_html(a),
        "compare": render_compare([Result(HOSTILE[3], a), Result(HOSTILE[0], b)]),
    }


def test_hostile_names_are_escaped_text_in_the_pages():
    for name, page in _pages().items():
        assert "presso-xss" in page, name  # the names are on the page...
        assert "<script>" not in page and "<img" not in page and "<svg onload" not in page, name
        assert "&lt;script&gt;" in page, name  # ...as text


def test_no_script_in_a_hostile_name_runs_in_chromium(chromium, tmp_path):  # noqa: F811
    for name, html in _pages().items():
        page = tmp_path / f"{name}.html"
        page.write_text(html)
        rc, err, _ = screenshot(chromium, page, (1280, 2000))
        assert rc == 0, err[-2000:]
        assert _CONSOLE.findall(err) == [], (name, _CONSOLE.findall(err))
