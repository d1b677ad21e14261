"""Tiny server-rendered SVG charts: line charts, bar charts and confidence-interval whiskers.

No JavaScript and no CDN: each function returns a complete <svg> element (as markupsafe.Markup, ready
for a Jinja template) with axes, ticks, axis titles with units, a <title> for screen readers, and a
legend. Every piece of text is escaped. Colours are inline attributes, so the charts also read in an
exported HTML file without the stylesheet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = ["#2f5fd0", "#d0632f", "#2f9e5a", "#9b3fc4", "#b8900f", "#c43f6a", "#3fa6b8", "#666666"]
FONT = 'font-family="system-ui, sans-serif"'


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (x, y), y may be None (a gap)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, v = [], start
    while v < hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def fmt(v: float) -> str:
    """Short tick label: 0.25, 1.5, 12, 1.2k, 3e-05."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10_000:
        return f"{v / 1000:.0f}k"
    if a >= 1000:
        return f"{v / 1000:.1f}k"
    if a < 0.001:
        return f"{v:.0e}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """fmt() of each tick, with more significant digits where that would print two ticks alike (a small
    range far from zero: a KL coefficient between 0.05 and 0.0503 reads 0.05, 0.0501, 0.0502, 0.0503)."""
    labels = [fmt(t) for t in ticks]
    digits = 2
    while len(set(labels)) < len(labels) and digits <= 15:
        labels = [f"{t:.{digits}g}" for t in ticks]
        digits += 1
    return labels


class _Frame:
    """Plot area geometry and scales."""

    def __init__(self, width, height, x_range, y_range, left=58, right=16, top=34, bottom=46):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.pw, self.ph = width - left - right, height - top - bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 1, self.y1 + 1

    def x(self, v: float) -> float:
        return round(self.left + (v - self.x0) / (self.x1 - self.x0) * self.pw, 1)

    def y(self, v: float) -> float:
        return round(self.top + self.ph - (v - self.y0) / (self.y1 - self.y0) * self.ph, 1)


def _open(width: int, height: int, title: str, css_class: str) -> list[str]:
    return [f'<svg class="chart {css_class}" viewBox="0 0 {width} {height}" role="img" '
            f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" {FONT}>',
            f"<title>{escape(title)}</title>"]


def _y_axis(f: _Frame, ticks: Sequence[float], label: str) -> list[str]:
    out = []
    for t, text in zip(ticks, tick_labels(ticks), strict=True):
        y = f.y(t)
        out.append(f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{y}" y2="{y}" stroke="#e3e3e3" stroke-width="1"/>')
        out.append(f'<text x="{f.left - 6}" y="{y + 4}" text-anchor="end" font-size="11" fill="#555">{escape(text)}</text>')
    out.append(f'<line x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{f.top + f.ph}" stroke="#222"/>')
    cy = f.top + f.ph / 2
    out.append(f'<text transform="translate(14 {cy}) rotate(-90)" text-anchor="middle" font-size="12" fill="#222">{escape(label)}</text>')
    return out


def _x_axis(f: _Frame, ticks: Sequence[tuple[float, str]], label: str) -> list[str]:
    base = f.top + f.ph
    out = [f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{base}" y2="{base}" stroke="#222"/>']
    for v, text in ticks:
        x = f.x(v)
        out.append(f'<line x1="{x}" x2="{x}" y1="{base}" y2="{base + 4}" stroke="#222"/>')
        out.append(f'<text x="{x}" y="{base + 16}" text-anchor="middle" font-size="11" fill="#555">{escape(text)}</text>')
    out.append(f'<text x="{f.left + f.pw / 2}" y="{f.height - 8}" text-anchor="middle" font-size="12" fill="#222">{escape(label)}</text>')
    return out


def _legend(f: _Frame, names: Sequence[str]) -> list[str]:
    out, x = [], f.left
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{color}" rx="2"/>')
        out.append(f'<text x="{x + 16}" y="20" font-size="12" fill="#222">{escape(name)}</text>')
        x += 28 + 7 * len(name)
    return out


def _empty(width: int, height: int, title: str, message: str) -> Markup:
    parts = _open(width, height, title, "empty")
    parts.append(f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" stroke="#e3e3e3"/>')
    parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="13" fill="#777">{escape(message)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 900,
               height: int = 250, markers: Sequence[tuple[float, str]] = (), y_range: tuple[float, float] | None = None,
               empty: str = "no data yet") -> Markup:
    """Lines (with dots) for each series; `markers` draws dashed vertical lines at x with a label."""
    points = [(x, y) for s in series for x, y in s.points if y is not None and math.isfinite(y)]
    if not points:
        return _empty(width, height, title, empty)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    x_ticks = nice_ticks(min(xs), max(xs), 7)
    x_ticks = [t for t in x_ticks if t == int(t)] or x_ticks
    f = _Frame(width, height, (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    parts = _open(width, height, title, "line")
    parts += _y_axis(f, y_ticks, y_label)
    parts += _x_axis(f, list(zip(x_ticks, tick_labels(x_ticks), strict=True)), x_label)
    for x, label in markers:
        px = f.x(x)
        parts.append(f'<line x1="{px}" x2="{px}" y1="{f.top}" y2="{f.top + f.ph}" stroke="#999" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{px + 3}" y="{f.top + 11}" font-size="10" fill="#777">{escape(label)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(f.x(x), f.y(y)) for x, y in s.points if y is not None and math.isfinite(y)]
        if not pts:
            continue
        segments, current = [], []
        for x, y in s.points:  # a None value breaks the line (e.g. between training rounds)
            if y is None or not math.isfinite(y):
                if current:
                    segments.append(current)
                current = []
            else:
                current.append((f.x(x), f.y(y)))
        if current:
            segments.append(current)
        parts.append(f'<g class="series"><title>{escape(s.name)}</title>')
        for seg in segments:
            path = " ".join(f"{x},{y}" for x, y in seg)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>')
        if len(pts) <= 60:
            parts += [f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>' for x, y in pts]
        parts.append("</g>")
    parts += _legend(f, [s.name for s in series])
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: Sequence[tuple[str, float | None]], *, title: str, x_label: str, y_label: str,
              width: int = 900, height: int = 240, y_range: tuple[float, float] | None = None,
              reference: tuple[float, str] | None = None, value_format: str = "{:.2f}",
              empty: str = "no data yet") -> Markup:
    """One bar per (label, value) with the value printed above it; `reference` draws a dashed line."""
    values = [v for _, v in bars if v is not None]
    if not values:
        return _empty(width, height, title, empty)
    lo, hi = y_range or (min(0.0, *values), max(values))
    y_ticks = nice_ticks(lo, hi)
    f = _Frame(width, height, (0, len(bars)), (y_ticks[0], y_ticks[-1]), top=24)
    parts = _open(width, height, title, "bar")
    parts += _y_axis(f, y_ticks, y_label)
    slot = f.pw / len(bars)
    base = f.top + f.ph
    for i, (label, v) in enumerate(bars):
        cx = f.left + slot * (i + 0.5)
        parts.append(f'<text x="{round(cx, 1)}" y="{base + 16}" text-anchor="middle" font-size="11" fill="#555">{escape(label)}</text>')
        if v is None:
            continue
        y0, y1 = f.y(max(f.y0, 0)), f.y(v)
        top, h = min(y0, y1), abs(y0 - y1)
        w = min(slot * 0.6, 60)
        parts.append(f'<g><title>{escape(label)}: {escape(value_format.format(v))}</title>'
                     f'<rect x="{round(cx - w / 2, 1)}" y="{top}" width="{round(w, 1)}" height="{round(h, 1)}" fill="{PALETTE[0]}"/></g>')
        parts.append(f'<text x="{round(cx, 1)}" y="{top - 4}" text-anchor="middle" font-size="11" fill="#222">{escape(value_format.format(v))}</text>')
    parts.append(f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{base}" y2="{base}" stroke="#222"/>')
    parts.append(f'<text x="{f.left + f.pw / 2}" y="{height - 8}" text-anchor="middle" font-size="12" fill="#222">{escape(x_label)}</text>')
    if reference is not None:
        ry = f.y(reference[0])
        parts.append(f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{ry}" y2="{ry}" stroke="#c43f3f" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{f.left + 4}" y="{ry - 4}" font-size="11" fill="#c43f3f">{escape(reference[1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def ci_chart(rows: Sequence[tuple[str, str, float | None, float | None, float | None]], *, title: str, x_label: str,
             x_range: tuple[float, float] = (1.0, 5.0), groups: Sequence[str] = (), width: int = 900) -> Markup:
    """Horizontal whiskers: rows of (group, series, mean, low, high); one block per group (e.g. dimension),
    one coloured whisker per series (e.g. model version) with a dot at the mean."""
    groups = list(groups) or list(dict.fromkeys(r[0] for r in rows))
    names = list(dict.fromkeys(r[1] for r in rows))
    if not rows or all(r[2] is None for r in rows):
        return _empty(width, 120, title, "no ratings yet")
    line_h, gap = 14, 12
    block = len(names) * line_h + gap
    left = 160
    height = 34 + len(groups) * block + 40
    f = _Frame(width, height, x_range, (0, 1), left=left, top=34, bottom=40)
    parts = _open(width, height, title, "ci")
    ticks = nice_ticks(*x_range, 5)
    for t in ticks:
        x = f.x(t)
        parts.append(f'<line x1="{x}" x2="{x}" y1="{f.top}" y2="{f.top + f.ph}" stroke="#e3e3e3"/>')
    parts += _x_axis(f, list(zip(ticks, tick_labels(ticks), strict=True)), x_label)
    by_key = {(r[0], r[1]): r for r in rows}
    for gi, g in enumerate(groups):
        y_top = f.top + gi * block + gap / 2
        parts.append(f'<text x="{left - 8}" y="{round(y_top + len(names) * line_h / 2 + 4, 1)}" text-anchor="end" '
                     f'font-size="12" fill="#222">{escape(g)}</text>')
        for ni, n in enumerate(names):
            r = by_key.get((g, n))
            if r is None or r[2] is None:
                continue
            _, _, mean, low, high = r
            y = round(y_top + ni * line_h + line_h / 2, 1)
            color = PALETTE[ni % len(PALETTE)]
            parts.append(f'<g><title>{escape(g)}, {escape(n)}: mean {mean:.2f}, 95 % CI {low:.2f}–{high:.2f}</title>'
                         f'<line x1="{f.x(low)}" x2="{f.x(high)}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2"/>'
                         f'<line x1="{f.x(low)}" x2="{f.x(low)}" y1="{y - 4}" y2="{y + 4}" stroke="{color}" stroke-width="2"/>'
                         f'<line x1="{f.x(high)}" x2="{f.x(high)}" y1="{y - 4}" y2="{y + 4}" stroke="{color}" stroke-width="2"/>'
                         f'<circle cx="{f.x(mean)}" cy="{y}" r="4" fill="{color}"/></g>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{f.top}" y2="{f.top + f.ph}" stroke="#222"/>')
    parts += _legend(f, names)
    parts.append("</svg>")
    return Markup("".join(parts))
