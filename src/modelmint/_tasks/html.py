"""The pieces every task's report sections are drawn with: one style sheet, escaping, tables.
Reports are self-contained: inline CSS and SVG, no script, nothing fetched."""

from __future__ import annotations

import html
from typing import Any

CSS = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}.warn{color:#a60}
h2{margin-top:1.6em}svg{background:#fafafa;border:1px solid #ddd;margin:4px}"""
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def curves_svg(curves: dict[str, dict[str, Any]], x: str, y: str, legend: str) -> str:
    """Curves in the unit square, one colour each: ``curves[name][x]`` against ``[y]``, the
    legend showing ``curves[name][legend]``."""
    w = h = 260
    m = 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 160}" height="{h + 20}">',
             f'<rect x="{m}" y="10" width="{w - m}" height="{h - m}" fill="none" stroke="#999"/>',
             f'<text x="{w / 2}" y="{h + 10}" font-size="11">{esc(x)}</text>',
             f'<text x="2" y="{h / 2}" font-size="11">{esc(y[:5])}.</text>']
    for n, (label, curve) in enumerate(curves.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(f"{m + a * (w - m):.1f},{10 + (1 - b) * (h - m):.1f}"
                          for a, b in zip(curve[x], curve[y], strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{points}"/>')
        parts.append(f'<text x="{w + 8}" y="{20 + 14 * n}" font-size="11" fill="{colour}">'
                     f'{esc(label[:14])} {esc(legend)} {curve[legend]:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)
