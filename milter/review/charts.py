"""Charts for the agency dashboard, drawn on the server as SVG.

No chart library, no CDN, no script: the page's CSP forbids them, and the figures are
few. Colours are SVG presentation attributes, which ``style-src 'self'`` allows.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

SERIES_COLOURS = ("#b45309", "#15803d", "#6b7280", "#b91c1c")


def grouped_bars(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
) -> Markup:
    """One group of bars per category (a week), one bar per series (held, released ...)."""
    left, bottom, top = 36, 34, 24
    plot_h = height - bottom - top
    top_value = max([1, *(v for _, values in series for v in values)])
    n = max(1, len(categories))
    group_w = (width - left - 8) / n
    bar_w = max(2.0, (group_w - 6) / max(1, len(series)))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}"'
        ' stroke="#999" stroke-width="1"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{top_value}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    for si, (name, values) in enumerate(series):
        colour = SERIES_COLOURS[si % len(SERIES_COLOURS)]
        lx = left + si * 110
        parts.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="13" font-size="11">{escape(name)}</text>')
        for ci, value in enumerate(values):
            h = plot_h * value / top_value
            x = left + ci * group_w + 3 + si * bar_w
            y = top + plot_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}"'
                f' fill="{colour}"><title>{escape(name)}: {value}</title></rect>'
            )
    for ci, cat in enumerate(categories):
        x = left + ci * group_w + group_w / 2
        parts.append(
            f'<text x="{x:.1f}" y="{height - 18}" font-size="10" text-anchor="middle">'
            f"{escape(cat)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(items: Sequence[tuple[str, int]], *, title: str, width: int = 320) -> Markup:
    """A horizontal bar per (name, count): top rules, clauses, destinations."""
    row = 18
    height = max(1, len(items)) * row + 6
    top_value = max([1, *(c for _, c in items)])
    label_w = 150
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (name, count) in enumerate(items):
        y = 3 + i * row
        w = (width - label_w - 40) * count / top_value
        label = name if len(name) <= 24 else name[:23] + "…"
        parts.append(
            f'<text x="{label_w - 4}" y="{y + 12}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="#1d4ed8"/>'
        )
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{count}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
