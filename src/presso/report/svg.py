"""Charts for report.html and compare.html, drawn as inline SVG strings by presso itself.

Why not matplotlib: it would add ~40 MB of dependencies and about a second of import time for
a handful of simple charts. Inline SVG keeps the page one small file that needs no script, no
network and no downloaded font, opens offline, and stays crisp when zoomed or printed.

Every chart is ``<svg class="plot" data-plot=NAME>`` with a ``<title>`` and an aria-label;
every mark carries a ``<title>`` tooltip with its exact value. Missing values (None, NaN)
are skipped, text is escaped, and coordinates are clamped into the viewBox.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Okabe & Ito's palette, told apart with the common colour-vision deficiencies (yellow last:
# it is faint on white).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MUTED = "#b9c0c8"  # skipped stages
_INK, _SUBTLE, _GRID = "#1b1f24", "#57606a", "#e3e7eb"
_CHAR_W = 6.0  # a rough width of one 10-11 px glyph of the UI font: enough to lay labels out
_MARKERS = ("circle", "square", "diamond", "triangle")


@dataclass(frozen=True)
class Series:
    """One named series: ``values`` (bar lengths or y), optional ``x`` and per-point ``labels``."""

    name: str
    values: Sequence[float | None]
    x: Sequence[float | None] | None = None
    labels: Sequence[str] | None = None


@dataclass(frozen=True)
class Mark:
    """A vertical line at ``value`` in the colour of series number ``series`` (e.g. its p50)."""

    series: int
    value: float
    label: str
    dash: str = "5 3"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def number(v) -> float | None:
    """``v`` as a finite float, or None (missing, NaN, infinite or not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def format_value(v: float, unit: str = "") -> str:
    """The exact value for a tooltip: ``1,234 bytes``, ``0.0266 ms``, ``0.9781``."""
    if unit == "bytes":
        return f"{v:,.0f} bytes"
    text = f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return f"{text} {unit}".strip()


def clip(text: str, chars: int, middle: bool = False) -> str:
    """``text`` cut to ``chars`` with an ellipsis; ``middle`` keeps both ends, where layer paths
    such as /encoder/layer.11/.../MatMul differ."""
    text = str(text)
    if len(text) <= chars:
        return text
    if middle and chars >= 9:
        head = (chars - 1) * 2 // 5
        return text[:head] + "\u2026" + text[len(text) - (chars - 1 - head) :]
    return text[: max(chars - 1, 1)] + "\u2026"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# ---------------------------------------------------------------- ticks and scales


def _nice(x: float, round_: bool) -> float:
    exp = math.floor(math.log10(x))
    f = x / 10**exp
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10.0**exp


def nice_ticks(lo, hi, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], in steps of 1, 2 or 5 times a power of ten (Heckbert).

    >>> nice_ticks(0, 100)
    [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    >>> nice_ticks(0, 1234)
    [0.0, 500.0, 1000.0, 1500.0]
    """
    lo, hi = number(lo), number(hi)
    if lo is None or hi is None:
        lo, hi = 0.0, 1.0
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:  # one value: widen around it (an all-zero axis runs 0..1)
        pad = abs(lo) * 0.1
        lo, hi = (0.0, 1.0) if lo == 0 else (lo - pad, hi + pad)
    step = _nice(_nice(hi - lo, False) / max(count - 1, 1), True)
    decimals = max(0, -math.floor(math.log10(step)))
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, decimals) + 0.0 for k in range(start, stop + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten covering [lo, hi] (lo > 0), with 2x and 5x between them over few decades."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    b = max(b, a + 1)
    ticks = [10.0**k for k in range(a, b + 1)]
    if b - a <= 2:
        ticks += [m * 10.0**k for k in range(a, b) for m in (2, 5)]
    return sorted(ticks)


class _Scale:
    """Maps data to pixels, clamped to [start, end] so that no mark leaves the plot."""

    def __init__(self, lo: float, hi: float, start: float, end: float, log: bool = False):
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        self.start, self.end = start, end

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, 1e-300))
        t = 0.5 if self.hi == self.lo else (v - self.lo) / (self.hi - self.lo)
        return self.start + min(max(t, 0.0), 1.0) * (self.end - self.start)


_BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "bytes"))


def _human_bytes(v: float) -> str:
    factor, name = next(((f, n) for f, n in _BYTE_UNITS if abs(v) >= f), (1.0, "bytes"))
    return f"{v / factor:.3g} {name}" if v else "0"


def _tick_format(ticks: list[float], unit: str, log: bool = False):
    """(how to write one tick, the unit for the axis title, its factor): bytes in kB/MB/GB,
    decimals by the step."""
    if log:
        if unit == "bytes":
            return _human_bytes, "log scale", 1.0
        return (lambda v: f"{v:g}"), f"{unit}, log scale" if unit else "log scale", 1.0
    factor, name = 1.0, unit
    if unit == "bytes":
        top = max(abs(t) for t in ticks)
        factor, name = next(((f, n) for f, n in _BYTE_UNITS if top >= f), (1.0, "bytes"))
    step = (ticks[1] - ticks[0]) / factor if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return (lambda v: f"{v / factor:,.{decimals}f}"), name, factor


def _axis_title(label: str, unit: str) -> str:
    return f"{label} ({unit})" if unit else label


# ---------------------------------------------------------------- SVG pieces


def _f(v: float) -> str:
    return f"{v:.1f}"


def _tip(tip) -> str:
    return f"<title>{esc(tip)}</title>" if tip else ""


def _text(x, y, text, *, anchor="start", size=10, fill=_INK, weight=None, tip=None) -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{fill}"{bold}>{_tip(tip)}{esc(text)}</text>'
    )


def _line(x1, y1, x2, y2, stroke, *, width=1.0, dash=None, tip=None) -> str:
    dash = f' stroke-dasharray="{esc(dash)}"' if dash else ""
    return (
        f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" stroke="{stroke}" '
        f'stroke-width="{width:g}"{dash}>{_tip(tip)}</line>'
    )


def _rect(x, y, w, h, fill, tip=None, extra="") -> str:
    return (
        f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(max(w, 0.5))}" height="{_f(max(h, 0.5))}" '
        f'fill="{fill}"{extra}>{_tip(tip)}</rect>'
    )


def _root(name: str, title: str, width: float, height: float, body: list[str]) -> str:
    w, h = math.ceil(width), math.ceil(height)
    # No xmlns: inline in HTML5 an <svg> is in the SVG namespace anyway, and the page stays
    # free of any URL.
    return (
        f'<svg class="plot" data-plot="{esc(name)}" '
        f'viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{esc(title)}" '
        f'font-family="system-ui, -apple-system, Segoe UI, sans-serif"><title>{esc(title)}</title>'
        + _text(4, 15, clip(title, int(w / 7)), size=12, weight="600")
        + "".join(body)
        + "</svg>"
    )


def _marker(shape: str, x: float, y: float, fill: str, tip: str | None, r: float = 4.0) -> str:
    paint = f'fill="{fill}" stroke="#fff" stroke-width="1"'
    if shape == "square":
        return _rect(x - r, y - r, 2 * r, 2 * r, fill, tip, ' stroke="#fff" stroke-width="1"')
    if shape in ("diamond", "triangle"):
        s = r * 1.3
        pts = (
            [(x, y - s), (x + s, y), (x, y + s), (x - s, y)]
            if shape == "diamond"
            else [(x, y - s), (x + s, y + s * 0.8), (x - s, y + s * 0.8)]
        )
        points = " ".join(f"{_f(a)},{_f(b)}" for a, b in pts)
        return f'<polygon points="{points}" {paint}>{_tip(tip)}</polygon>'
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" {paint}>{_tip(tip)}</circle>'


def _legend(entries: list[tuple[str, str, str]], width: float, y0: float = 34) -> tuple[list[str], float]:
    """Swatches in rows under the title; entries are (name, colour, box|line|dash|dot|MARKER).
    Returns the SVG parts and the y where the plot may start."""
    out, x, y = [], 8.0, y0
    for name, fill, style in entries:
        label = clip(name, 40)
        w = 32 + len(label) * _CHAR_W
        if x > 8 and x + w > width - 8:
            x, y = 8.0, y + 16
        if style == "box":
            out.append(_rect(x, y - 8, 12, 10, fill))
        elif style in ("line", "dash", "dot"):
            out.append(
                _line(
                    x,
                    y - 3,
                    x + 14,
                    y - 3,
                    fill,
                    width=2,
                    dash={"line": None, "dash": "5 3", "dot": "1.5 2.5"}[style],
                )
            )
        else:
            out.append(_marker(style, x + 6, y - 3, fill, None))
        out.append(_text(x + 18, y, label, tip=name if label != name else None))
        x += w
    return out, y + 8


def _y_grid(ticks, ys: _Scale, fmt, left: float, right: float, title: str) -> list[str]:
    """Horizontal grid lines with tick labels left of the plot, and the rotated axis title."""
    out = []
    for t in ticks:
        out += [
            _line(left, ys(t), right, ys(t), _GRID),
            _text(left - 5, ys(t) + 3.5, fmt(t), anchor="end", fill=_SUBTLE),
        ]
    mid = (ys.start + ys.end) / 2
    return out + [
        f'<g transform="translate(11,{_f(mid)}) rotate(-90)">'
        + _text(0, 0, title, anchor="middle", fill=_SUBTLE)
        + "</g>"
    ]


def _x_axis(ticks, xs: _Scale, fmt, top: float, bottom: float, title: str, grid: bool = True) -> list[str]:
    """Vertical grid lines (unless ``grid`` is False), tick labels under the plot and the axis title."""
    out = [_line(xs(t), top, xs(t), bottom, _GRID) for t in ticks] if grid else []
    out += [_text(xs(t), bottom + 14, fmt(t), anchor="middle", fill=_SUBTLE) for t in ticks]
    out.append(_text((xs.start + xs.end) / 2, bottom + 30, title, anchor="middle", fill=_SUBTLE))
    return out


def _categories(cats, xs: _Scale, bottom: float, chars: int, muted: set[int], note: str) -> list[str]:
    out = []
    for k, c in enumerate(cats):
        out.append(
            _text(
                xs(k),
                bottom + 13,
                clip(c, chars),
                anchor="middle",
                fill=MUTED if k in muted else _INK,
                tip=c if len(c) > chars else None,
            )
        )
        if k in muted:
            out.append(_text(xs(k), bottom + 25, note, anchor="middle", size=9, fill=MUTED))
    return out


def _ref(ref: tuple[float, str] | None, scale: _Scale, a: float, b: float, horizontal: bool) -> list[str]:
    """A labelled dashed reference line (e.g. the quality budget) across the plot."""
    if ref is None or number(ref[0]) is None:
        return []
    p, tip = scale(ref[0]), f"{ref[1]}: {format_value(ref[0])}"
    if horizontal:  # at y = p, from x = a to b
        return [
            _line(a, p, b, p, _INK, width=1.5, dash="6 4", tip=tip),
            _text(b - 2, p - 4, ref[1], anchor="end", tip=tip),
        ]
    flip = p > (scale.start + scale.end) / 2  # label on the inner side, so that it is never cut off
    return [
        _line(p, a, p, b, _INK, width=1.5, dash="6 4", tip=tip),
        _text(p - 3 if flip else p + 3, a + 10, ref[1], anchor="end" if flip else "start", tip=tip),
    ]


def _extent(values: list[float], *extra) -> tuple[float, float]:
    pool = values + [v for v in (number(e) for e in extra) if v is not None]
    return min(pool), max(pool)


def _no_data(name, title, width, height, message="no data to plot") -> str:
    return _root(
        name, title, width, height, [_text(width / 2, height / 2, message, anchor="middle", fill=_SUBTLE)]
    )


def _left(tick_labels) -> float:
    """Room left of the plot for the tick labels and the rotated axis title."""
    return max(len(t) for t in tick_labels) * _CHAR_W + 26


def _cap(
    categories: list[str],
    values: list[list[float | None]],
    max_bars: int,
    other: str,
    sort: bool,
    muted: set[int],
) -> tuple[list[str], list[list[float | None]], set[int], bool]:
    """Keep the ``max_bars - 1`` largest categories (by |value|), the rest summed into one bar."""

    def size(i):
        return max((abs(row[i]) for row in values if row[i] is not None), default=-1.0)

    order = sorted(range(len(categories)), key=size, reverse=True) if sort else list(range(len(categories)))
    if len(order) > max_bars:
        keep = set(sorted(order, key=size, reverse=True)[: max_bars - 1])
        rest = [i for i in order if i not in keep]
        order = [i for i in order if i in keep]
    else:
        rest = []
    cats = [categories[i] for i in order] + ([other.format(k=len(rest))] if rest else [])
    vals: list[list[float | None]] = []
    for row in values:
        tail = [v for v in (row[i] for i in rest) if v is not None]
        vals.append([row[i] for i in order] + ([sum(tail) if tail else None] if rest else []))
    return cats, vals, {k for k, i in enumerate(order) if i in muted}, bool(rest)


# ---------------------------------------------------------------- charts


def bar_chart(
    name: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    value_label: str,
    unit: str = "",
    horizontal: bool = True,
    max_bars: int = 30,
    other: str = "other ({k} layers)",
    sort: bool = False,
    muted: Sequence[int] = (),
    muted_note: str = "skipped",
    ref: tuple[float, str] | None = None,
    show_values: bool = False,
    width: float = 640,
    height: float = 260,
) -> str:
    """Bars per category, one colour per series side by side. Past ``max_bars`` categories the
    largest ``max_bars - 1`` are kept and the rest summed into one "other" bar; ``muted`` ones are grey.
    Horizontal charts grow in height with the number of categories."""
    matrix = [
        [number(s.values[i]) if i < len(s.values) else None for i in range(len(categories))] for s in series
    ]
    cats, vals, muted_set, capped = _cap(
        [str(c) for c in categories], matrix, max_bars, other, sort, set(muted)
    )
    finite = [v for row in vals for v in row if v is not None]
    if not finite:
        return _no_data(name, title, width, height)
    # The summed "other" bar of hundreds of layers would flatten every other bar: the scale
    # follows the named bars, and "other" runs off it with its value written on it.
    scaled = [v for row in vals for v in (row[:-1] if capped and horizontal else row) if v is not None]
    ticks = nice_ticks(*_extent(scaled or finite, 0.0, ref[0] if ref else None))
    fmt, axis_unit, factor = _tick_format(ticks, unit)
    body, top = (
        _legend([(s.name, colour(i), "box") for i, s in enumerate(series)], width)
        if len(series) > 1
        else ([], 26.0)
    )
    bars = _Bars(
        cats,
        vals,
        [s.name for s in series],
        muted_set,
        muted_note,
        unit,
        ticks,
        fmt,
        _axis_title(value_label, axis_unit),
        factor,
        ref,
    )
    if horizontal:
        parts, plot_bottom = _horizontal_bars(bars, top, width)
        return _root(name, title, width, plot_bottom + 40, body + parts)
    return _root(name, title, width, height, body + _vertical_bars(bars, top, width, height, show_values))


@dataclass(frozen=True)
class _Bars:
    """What a bar chart draws in either orientation: the categories left after capping, each
    series' value per category, and the value axis."""

    cats: list[str]
    vals: list[list[float | None]]  # per series, per category
    names: list[str]  # the series'
    muted: set[int]
    note: str  # what a muted category is, e.g. "skipped"
    unit: str
    ticks: list[float]
    fmt: Callable[[float], str]
    axis_title: str
    factor: float  # of the axis unit (e.g. 1e3 for kB), for the values written on vertical bars
    ref: tuple[float, str] | None

    def bar(self, k: int, j: int, v: float, x: float, y: float, w: float, h: float) -> str:
        """The bar of series ``j`` at category ``k``, with its exact value as the tooltip."""
        c = self.cats[k]
        tip = f"{c} \u00b7 {self.names[j]}" if len(self.names) > 1 else c
        tip = f"{tip}: {format_value(v, self.unit)}" + (f" ({self.note})" if k in self.muted else "")
        return _rect(x, y, w, h, MUTED if k in self.muted else colour(j), tip)


def _horizontal_bars(b: _Bars, top: float, width: float) -> tuple[list[str], float]:
    """A row per category, labelled on the left; returns the parts and the plot's bottom (the
    chart grows with the categories)."""
    ns = len(b.names)
    chars = min(30, max(len(c) + (len(b.note) + 3 if k in b.muted else 0) for k, c in enumerate(b.cats)))
    left, thick = chars * _CHAR_W + 14, (12.0 if ns == 1 else 9.0)
    band, plot_top = ns * thick + 7, top + 4
    plot_bottom = plot_top + band * len(b.cats)
    xs = _Scale(b.ticks[0], b.ticks[-1], left, width - 18)
    out = _x_axis(b.ticks, xs, b.fmt, plot_top, plot_bottom, b.axis_title)
    for k, c in enumerate(b.cats):
        y = plot_top + k * band + 3.5
        shown = c + (f" ({b.note})" if k in b.muted else "")
        out.append(
            _text(
                left - 6,
                y + ns * thick / 2 + 3.5,
                clip(shown, chars, middle=True),
                anchor="end",
                fill=MUTED if k in b.muted else _INK,
                tip=shown if len(shown) > chars else None,
            )
        )
        for j in range(ns):
            v = b.vals[j][k]
            if v is not None:
                x0, x1 = sorted((xs(0.0), xs(v)))
                out.append(b.bar(k, j, v, x0, y + j * thick, x1 - x0, thick - 1))
                if not b.ticks[0] <= v <= b.ticks[-1]:
                    out.append(_off_scale(v, b.unit, x0, x1, y + j * thick + thick - 3, thick))
    out.append(_line(xs(0.0), plot_top, xs(0.0), plot_bottom, _INK))
    out += _ref(b.ref, xs, plot_top, plot_bottom, horizontal=False)
    return out, plot_bottom


def _off_scale(v: float, unit: str, x0: float, x1: float, y: float, thick: float) -> str:
    """The value written in white inside a bar that runs past the axis (the summed "other")."""
    return _text(
        x1 - 4 if v > 0 else x0 + 4,
        y,
        f"{format_value(v, unit)} (off scale)",
        size=min(thick - 2, 9),
        anchor="end" if v > 0 else "start",
        fill="#fff",
    )


def _vertical_bars(b: _Bars, top: float, width: float, height: float, show_values: bool) -> list[str]:
    """A column group per category, labelled underneath; ``show_values`` writes each value over
    its bar where it fits."""
    ns = len(b.names)
    left, plot_top, plot_bottom, right = _left(map(b.fmt, b.ticks)), top + 10, height - 36, width - 10
    band = (right - left) / len(b.cats)
    ys = _Scale(b.ticks[0], b.ticks[-1], plot_bottom, plot_top)
    out = _y_grid(b.ticks, ys, b.fmt, left, right, b.axis_title)
    out += _categories(
        b.cats,
        _Scale(0, len(b.cats), left + band / 2, right + band / 2),
        plot_bottom,
        max(int(band / _CHAR_W), 3),
        b.muted,
        b.note,
    )
    group = band * 0.72
    thick = group / ns
    for k in range(len(b.cats)):
        for j in range(ns):
            v = b.vals[j][k]
            if v is None:
                continue
            x = left + band * (k + 0.5) - group / 2 + j * thick
            y0, y1 = sorted((ys(0.0), ys(v)))
            out.append(b.bar(k, j, v, x, y0, thick - 1.5, y1 - y0))
            short = f"{v / b.factor:,.0f}" if abs(v / b.factor) >= 100 else f"{v / b.factor:.3g}"
            if show_values and len(short) * 5.4 <= thick + 4:
                out.append(
                    _text(
                        x + (thick - 1.5) / 2,
                        max(y0 - 3, plot_top + 8),
                        short,
                        anchor="middle",
                        size=9,
                        fill=_SUBTLE,
                    )
                )
    out.append(_line(left, ys(0.0), right, ys(0.0), _INK))
    out += _ref(b.ref, ys, left, right, horizontal=True)
    return out


def line_chart(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_unit: str = "",
    y_unit: str = "",
    categories: Sequence[str] | None = None,
    step: bool = False,
    ref: tuple[float, str] | None = None,
    muted: Sequence[int] = (),
    muted_note: str = "skipped",
    include_zero: bool = False,
    width: float = 640,
    height: float = 300,
) -> str:
    """Lines with a marker on every point; x is numeric (``Series.x``) or ``categories`` (one
    value per category). ``step`` draws a step-after line; ``ref`` a labelled horizontal line."""
    muted_at = set(muted)
    pts = []
    for s in series:
        xs_ = range(len(s.values)) if categories is not None else (s.x or [])
        row = [(number(x), number(y)) for x, y in zip(xs_, s.values, strict=False)]
        pts.append([(x, y) for x, y in row if x is not None and y is not None])
    ys_all = [y for p in pts for _, y in p]
    if not ys_all:
        return _no_data(name, title, width, height)
    yt = nice_ticks(*_extent(ys_all, ref[0] if ref else None, 0.0 if include_zero else None))
    yfmt, y_axis_unit, _ = _tick_format(yt, y_unit)
    body, top = (
        _legend([(s.name, colour(i), "line") for i, s in enumerate(series)], width)
        if len(series) > 1
        else ([], 26.0)
    )
    left, plot_top, plot_bottom, right = _left(map(yfmt, yt)), top + 10, height - 36, width - 14
    ys = _Scale(yt[0], yt[-1], plot_bottom, plot_top)
    body += _y_grid(yt, ys, yfmt, left, right, _axis_title(y_label, y_axis_unit))
    if categories is not None:
        band = (right - left) / max(len(categories), 1)
        xs = _Scale(0, len(categories), left + band / 2, right + band / 2)
        body += _categories(categories, xs, plot_bottom, max(int(band / _CHAR_W), 3), muted_at, muted_note)

        def where(x):
            return categories[int(x)]
    else:
        xt = nice_ticks(*_extent([x for p in pts for x, _ in p]))
        xfmt, x_axis_unit, _ = _tick_format(xt, x_unit)
        xs = _Scale(xt[0], xt[-1], left, right)
        body += _x_axis(xt, xs, xfmt, plot_top, plot_bottom, _axis_title(x_label, x_axis_unit), grid=False)

        def where(x):
            return f"{x_label} {format_value(x, x_unit)}"

    body.append(_line(left, plot_bottom, right, plot_bottom, _INK))
    body += _ref(ref, ys, left, right, horizontal=True)
    for j, (s, p) in enumerate(zip(series, pts, strict=True)):
        if len(p) > 1:
            d = f"M{_f(xs(p[0][0]))},{_f(ys(p[0][1]))}"
            for x, y in p[1:]:
                d += f"H{_f(xs(x))}V{_f(ys(y))}" if step else f"L{_f(xs(x))},{_f(ys(y))}"
            body.append(f'<path d="{d}" fill="none" stroke="{colour(j)}" stroke-width="2"/>')
        for x, y in p:
            off = categories is not None and int(x) in muted_at
            tip = f"{s.name + ' · ' if len(series) > 1 else ''}{where(x)}: {format_value(y, y_unit)}"
            body.append(
                _marker(
                    "circle",
                    xs(x),
                    ys(y),
                    MUTED if off else colour(j),
                    tip + (f" ({muted_note})" if off else ""),
                    r=4.5,
                )
            )
    return _root(name, title, width, height, body)


def scatter_chart(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_unit: str = "",
    y_unit: str = "",
    log_x: bool = False,
    x_zero: bool = False,
    quiet: Sequence[int] = (),
    width: float = 640,
    height: float = 380,
) -> str:
    """Labelled points, one marker shape and colour per series; ``log_x`` for ranges over decades
    (points at x <= 0 are then left out), else ``x_zero`` starts the x axis at zero so that
    distances read as ratios. The series numbered in ``quiet`` keep their point labels in the
    tooltips only (e.g. a second point per result)."""
    pts = []
    for s in series:
        labels = list(s.labels or [])
        row = [
            (number(x), number(y), labels[i] if i < len(labels) else "")
            for i, (x, y) in enumerate(zip(s.x or [], s.values, strict=False))
        ]
        pts.append(
            [(x, y, lab) for x, y, lab in row if x is not None and y is not None and (x > 0 or not log_x)]
        )
    xs_all, ys_all = [x for p in pts for x, _, _ in p], [y for p in pts for _, y, _ in p]
    if not xs_all:
        return _no_data(name, title, width, height)
    lo, hi = _extent(ys_all)
    yt = nice_ticks(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))  # no point on the frame
    yfmt, y_axis_unit, _ = _tick_format(yt, y_unit)
    if log_x:
        xt = log_ticks(min(xs_all) / 1.2, max(xs_all) * 1.2)
    else:
        xt = nice_ticks(*_extent(xs_all, 0.0 if x_zero else None))
    xfmt, x_axis_unit, _ = _tick_format(xt, x_unit, log=log_x)
    entries = [(s.name, colour(i), _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(series)]
    body, top = _legend(entries, width) if len(series) > 1 else ([], 26.0)
    left, plot_top, plot_bottom, right = _left(map(yfmt, yt)), top + 12, height - 38, width - 16
    xs = _Scale(xt[0], xt[-1], left + 8, right - 8, log=log_x)
    ys = _Scale(yt[0], yt[-1], plot_bottom - 6, plot_top + 6)
    body += _y_grid(yt, ys, yfmt, left, right, _axis_title(y_label, y_axis_unit))
    body += _x_axis(xt, xs, xfmt, plot_top, plot_bottom, _axis_title(x_label, x_axis_unit))
    body.append(_line(left, plot_bottom, right, plot_bottom, _INK))
    placed: list[tuple[float, float, float, float]] = []
    for j, (s, p) in enumerate(zip(series, pts, strict=True)):
        for x, y, lab in p:
            px, py = xs(x), ys(y)
            tip = (
                f"{lab + ' · ' if lab else ''}{s.name}: {x_label} {format_value(x, x_unit)}, "
                f"{y_label} {format_value(y, y_unit)}"
            )
            body.append(_marker(_MARKERS[j % len(_MARKERS)], px, py, colour(j), tip, r=5))
            if lab and j not in quiet:
                shown = clip(lab, 30, middle=True)
                tx, ty, anchor = _place(
                    px, py, len(shown) * _CHAR_W, placed, (left, plot_top, right, plot_bottom)
                )
                body.append(_text(tx, ty, shown, anchor=anchor, tip=lab))
    return _root(name, title, width, height, body)


def _place(px, py, w, placed: list, bounds) -> tuple[float, float, str]:
    """Where a point's label goes: the first of right/left, above/below that stays in the plot and
    overlaps no label placed before (else the first); ``placed`` collects the boxes."""
    left, top, right, bottom = bounds
    spots = [(8, -6, "start"), (-8, -6, "end"), (8, 15, "start"), (-8, 15, "end")]
    if px > left + (right - left) * 0.62:  # near the right edge: try the left side first
        spots = [spots[1], spots[0], spots[3], spots[2]]
    boxes = []
    for dx, dy, anchor in spots:
        x0 = px + dx if anchor == "start" else px + dx - w
        box = (x0, py + dy - 10, x0 + w, py + dy + 2)
        inside = left <= box[0] and box[2] <= right and top <= box[1] and box[3] <= bottom
        free = all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in placed)
        boxes.append((inside and free, box, (px + dx, py + dy, anchor)))
    ok, box, spot = next((b for b in boxes if b[0]), boxes[0])
    placed.append(box)
    return spot


def histogram(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    unit: str = "",
    marks: Sequence[Mark] = (),
    width: float = 640,
    height: float = 280,
) -> str:
    """Overlaid step histograms of each series' values on shared bins (about 30); values
    far past the pooled p95 go to the last bin. ``marks`` draw e.g. each series' p50 and p95."""
    data = [[v for v in (number(x) for x in s.values) if v is not None] for s in series]
    pooled = sorted(v for d in data for v in d)
    if not pooled:
        return _no_data(name, title, width, height, "no samples")
    xt, step, counts = _bins(data, pooled, marks)
    lo, hi, nbins = xt[0], xt[-1], len(counts[0])
    yt = nice_ticks(0, max(4, max(max(c) for c in counts)))
    xfmt, x_axis_unit, _ = _tick_format(xt, unit)
    body, top = _legend(_histogram_entries(series, data, marks), width)
    left, plot_top, plot_bottom, right = _left(f"{t:g}" for t in yt), top + 10, height - 36, width - 14
    xs, ys = _Scale(lo, hi, left, right), _Scale(yt[0], yt[-1], plot_bottom, plot_top)
    body += _y_grid(yt, ys, lambda v: f"{v:g}", left, right, "calls")
    body += _x_axis(xt, xs, xfmt, plot_top, plot_bottom, _axis_title(x_label, x_axis_unit), grid=False)
    over = sum(1 for v in pooled if v >= hi)
    if over:
        body.append(
            _text(
                right,
                plot_top - 4,
                f"{over} slower call{'s' * (over > 1)} (up to "
                f"{format_value(pooled[-1], unit)}) counted in the last bin",
                anchor="end",
                size=9,
                fill=_SUBTLE,
            )
        )
    for b in range(nbins):  # an invisible column per bin, for its tooltip
        a, z = lo + b * step, lo + (b + 1) * step
        span = f"\u2265 {a:.4g}" if b == nbins - 1 and over else f"{a:.4g}\u2013{z:.4g}"
        tip = f"{span} {unit}: " + ", ".join(f"{s.name} {c[b]}" for s, c in zip(series, counts, strict=True))
        body.append(
            _rect(xs(a), plot_top, xs(z) - xs(a), plot_bottom - plot_top, "#fff", tip, ' fill-opacity="0"')
        )
    for j, c in enumerate(counts):
        if data[j]:
            body += _step_outline(c, colour(j), series[j].name, xs, ys, lo, step)
    body += _mark_lines(marks, series, unit, xs, plot_top, plot_bottom)
    body.append(_line(left, plot_bottom, right, plot_bottom, _INK))
    return _root(name, title, width, height, body)


def _bins(
    data: list[list[float]], pooled: list[float], marks: Sequence[Mark]
) -> tuple[list[float], float, list[list[int]]]:
    """The x ticks, the width of a bin, and each series' count per bin, on bins every series
    shares (``pooled`` is all the values, sorted)."""
    # A few calls 10x slower than the rest (a preempted thread) would squeeze the histogram into
    # one bin: the axis ends at twice the pooled p95 (or just past the marks), and slower calls
    # are counted in the last bin.
    marked = [v for v in (number(m.value) for m in marks) if v is not None]
    end = min(pooled[-1], max([2 * pooled[int(0.95 * (len(pooled) - 1))]] + [1.1 * v for v in marked]))
    xt = nice_ticks(*_extent([pooled[0], end], *marked))
    lo, hi = xt[0], xt[-1]
    step = _nice((hi - lo) / 30, True)  # about 30 bins, on round edges
    nbins = max(round((hi - lo) / step), 1)
    counts = []
    for d in data:
        c = [0] * nbins
        for v in d:
            c[min(max(int((v - lo) / step), 0), nbins - 1)] += 1
        counts.append(c)
    return xt, step, counts


def _histogram_entries(
    series: Sequence[Series], data: list[list[float]], marks: Sequence[Mark]
) -> list[tuple[str, str, str]]:
    """Legend entries: a box per series with its number of calls, then one line per kind of mark."""
    entries = [
        (f"{s.name} ({len(d)} calls)", colour(i), "box")
        for i, (s, d) in enumerate(zip(series, data, strict=True))
    ]
    styles = dict.fromkeys((m.label, m.dash) for m in marks)  # e.g. p50 dashed, p95 dotted
    return entries + [(lab, _INK, "dash" if dash == "5 3" else "dot") for lab, dash in styles]


def _step_outline(
    c: list[int], fill: str, name: str, xs: _Scale, ys: _Scale, lo: float, step: float
) -> list[str]:
    """One series' counts ``c`` as a filled step shape from its first non-empty bin to its last."""
    first, last = next(b for b, n in enumerate(c) if n), max(b for b, n in enumerate(c) if n)
    d = f"M{_f(xs(lo + first * step))},{_f(ys(0))}"
    d += "".join(f"V{_f(ys(c[b]))}H{_f(xs(lo + (b + 1) * step))}" for b in range(first, last + 1))
    d += f"V{_f(ys(0))}"
    return [
        f'<path d="{d}Z" fill="{fill}" fill-opacity="0.18" stroke="none"/>',
        f'<path d="{d}" fill="none" stroke="{fill}" stroke-width="2" stroke-linejoin="round">{_tip(name)}</path>',
    ]


def _mark_lines(
    marks: Sequence[Mark], series: Sequence[Series], unit: str, xs: _Scale, top: float, bottom: float
) -> list[str]:
    """A vertical line per mark, in its series' colour; marks without a value or a series are left out."""
    out = []
    for m in marks:
        if number(m.value) is not None and 0 <= m.series < len(series):
            tip = f"{series[m.series].name} {m.label}: {format_value(m.value, unit)}"
            out.append(
                _line(xs(m.value), top, xs(m.value), bottom, colour(m.series), width=2, dash=m.dash, tip=tip)
            )
    return out
