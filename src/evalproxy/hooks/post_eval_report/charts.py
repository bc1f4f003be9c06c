"""Small charts as inline SVG, drawn on the server so that the report needs no script and no external asset.

Every text that goes into a chart (titles, units, labels) is escaped here: the result is :class:`Markup` that the
report template inserts as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 380, 150
LEFT, RIGHT, TOP, BOTTOM = 30, 10, 24, 22


def _num(v: float) -> str:
    """A compact axis label: 3 significant digits, no exponent for the usual ranges."""
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


def svg_histogram(title: str, edges: Sequence[float], counts: Sequence[int], unit: str) -> Markup:
    """A bar chart of ``counts`` over the bins ``edges`` (len(counts) + 1 of them); empty Markup when there is no data.

    Each bar carries a ``<title>`` (a tooltip: its range and count); the axes show the range and the tallest bin.
    """
    if not counts or not any(counts) or len(edges) != len(counts) + 1:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bw = plot_w / len(counts)
    top = max(counts)
    base = TOP + plot_h
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="14" class="ttl">{escape(title)}</text>',
             f'<text x="{WIDTH - RIGHT}" y="14" class="ax" text-anchor="end">n = {sum(counts)}</text>',
             # y axis: the tallest bin and zero, with a faint guide line at the top
             f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" class="guide"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 4}" class="ax" text-anchor="end">{top}</text>',
             f'<text x="{LEFT - 4}" y="{base}" class="ax" text-anchor="end">0</text>']
    for i, c in enumerate(counts):
        bh = plot_h * c / top
        x = LEFT + i * bw
        label = f"{_num(edges[i])} to {_num(edges[i + 1])} {unit}: {c}"
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - bh:.1f}" width="{max(bw - 2, 1):.1f}" height="{bh:.1f}" '
                     f'rx="1.5"><title>{escape(label)}</title></rect>')
    mid = len(counts) // 2
    parts += [f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" class="axis"/>',
              f'<text x="{LEFT}" y="{HEIGHT - 6}" class="ax">{escape(_num(edges[0]))}</text>',
              f'<text x="{LEFT + mid * bw:.1f}" y="{HEIGHT - 6}" class="ax" text-anchor="middle">'
              f"{escape(_num(edges[mid]))}</text>",
              f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" class="ax" text-anchor="end">'
              f"{escape(_num(edges[-1]))} {escape(unit)}</text>",
              "</svg>"]
    return Markup("".join(parts))


# (histogram name in response_stats, chart title, unit)
CHARTS = (("latency_ms", "Latency", "ms"), ("completion_tokens", "Completion tokens", "tokens"))


def report_charts(response_stats: dict[str, Any]) -> list[Markup]:
    """The report's histograms, from the ``histograms`` of the response_stats section (absent ones are skipped)."""
    hist = response_stats.get("histograms")
    if not isinstance(hist, dict):
        return []
    out = []
    for name, title, unit in CHARTS:
        h = hist.get(name)
        if isinstance(h, dict) and isinstance(h.get("counts"), list) and isinstance(h.get("edges"), list):
            chart = svg_histogram(title, h["edges"], h["counts"], unit)
            if chart:
                out.append(chart)
    return out
