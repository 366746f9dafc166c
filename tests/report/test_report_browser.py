"""report.html and compare.html in a real headless Chromium: no console errors, every plot drawn.

Needs Debian's chromium (apt-get install chromium). Skipped without it, unless
PRESSO_REQUIRE_BROWSER=1 (CI), where a missing browser fails instead of passing silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_report_html import make_report, plots

from presso.report.compare import Result, render_compare
from presso.report.html import render_html
from presso.report.svg import PALETTE

# Chromium writes every console message (console.log and console.error alike, and failed loads)
# to its log as `[pid:tid:date:INFO:CONSOLE:12] "text", source: URL (12)`; older builds wrote
# `CONSOLE(12)`. The page has no scripts, so any such line is a fault.
_CONSOLE = re.compile(r"^.*:CONSOLE[:(].*$", re.M)


def _missing(what: str, fix: str):
    """Skip, or fail where the environment asks for the browser tests (CI sets PRESSO_REQUIRE_BROWSER=1)."""
    if os.environ.get("PRESSO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PRESSO_REQUIRE_BROWSER=1 but {what}: {fix} to run the browser tests.", pytrace=False)
    pytest.skip(f"{what} ({fix}); set PRESSO_REQUIRE_BROWSER=1 to require it")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("no chromium on PATH", "install Debian's chromium (apt-get install chromium)")
    try:
        import PIL  # noqa: F401  (the screenshots are read with Pillow)
    except ImportError:
        _missing("Pillow is not installed", "pip install -e '.[dev]'")
    return path


def screenshot(chromium: str, page: Path, size: tuple[int, int], scale: int = 1) -> tuple[int, str, Path]:
    """(exit code, stderr, png) of one headless Chromium run on ``page``, offline and sandboxed in tmp."""
    png, profile = page.with_suffix(".png"), page.with_suffix(".profile")
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--force-device-scale-factor={scale}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    return done.returncode, done.stderr, png


def colour_counts(png: Path, colours: list[str], tolerance: int = 40) -> dict[str, int]:
    """Pixels within ``tolerance`` (per channel) of each colour, e.g. a series' colour after anti-aliasing."""
    from PIL import Image

    with Image.open(png) as im:
        counts = im.convert("RGB").getcolors(maxcolors=1 << 24)
    out = {}
    for c in colours:
        rgb = tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))
        out[c] = sum(
            n for n, px in counts if max(abs(a - b) for a, b in zip(px, rgb, strict=False)) <= tolerance
        )
    return out


def test_console_detector_catches_a_console_error(chromium, tmp_path):
    """The negative control: without it, a detector that never matches would pass every page."""
    page = tmp_path / "probe.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>probe</p>"
        "<script>console.error('presso-console-probe')</script></body></html>"
    )
    rc, err, _ = screenshot(chromium, page, (400, 300))
    assert rc == 0, err[-2000:]
    assert any("presso-console-probe" in line for line in _CONSOLE.findall(err)), err[-2000:]


def _pages() -> dict[str, str]:
    a, b = make_report(), make_report(recipe="int8", quality=0.95, stored=False, latency=0.021)
    return {
        "report": render_html(a),
        "compare": render_compare([Result("digits-prune", a), Result("digits-int8", b)]),
    }


@pytest.mark.parametrize("name, height", [("report", 4000), ("compare", 1600)])
def test_page_renders_without_console_errors(chromium, tmp_path, name, height):
    from PIL import Image

    page = tmp_path / f"{name}.html"
    page.write_text(_pages()[name])
    rc, err, png = screenshot(chromium, page, (1280, height))
    assert rc == 0, err[-2000:]
    assert _CONSOLE.findall(err) == []
    with Image.open(png) as im:
        im.verify()  # a whole, valid PNG
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1280, height)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 24)
    white = sum(n for n, px in colours if min(px) >= 250)
    assert len(colours) > 100 and white < 0.95 * 1280 * height  # text, tables and charts, not a blank page


def test_every_plot_is_drawn(chromium, tmp_path):
    """Each chart alone on a page: the screenshot holds many pixels of each of its series' colours."""
    charts = {
        name: chunk
        for page in _pages().values()
        for name, chunk in zip(plots(page), re.findall(r"<svg\b.*?</svg>", page, flags=re.S), strict=True)
    }
    assert len(charts) == 10

    def shoot(item):
        name, chunk = item
        root = plots(chunk)[name]
        w, h = (int(v) for v in root.get("viewBox").split()[2:])
        page = tmp_path / f"{name}.html"
        page.write_text(f"<!DOCTYPE html><html><body style='margin:0;background:#fff'>{chunk}</body></html>")
        return name, chunk, screenshot(chromium, page, (w + 16, h + 16), scale=2)

    with ThreadPoolExecutor(max_workers=4) as pool:
        shots = list(pool.map(shoot, charts.items()))
    for name, chunk, (rc, err, png) in shots:
        assert rc == 0 and _CONSOLE.findall(err) == [], (name, err[-1000:])
        used = [c for c in PALETTE if f'"{c}"' in chunk]  # the series colours this chart drew with
        assert used, name
        counts = colour_counts(png, used)
        assert counts[used[0]] > 200, (name, counts)  # the first series: bars, lines or points
        assert all(n > 40 for n in counts.values()), (name, counts)  # every other series is visible too
