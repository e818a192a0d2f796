"""The report: one self-contained HTML file (hand-written inline SVG charts: a few rectangles
and polylines do not justify vendoring a chart library) and the same content as JSON."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .advisor import Analysis, analyze_summary, load_summary, resolve_profile_dir
from .deep import OPS_FILE
from .trace import PARTS, STEPS_FILE

REPORT_HTML, REPORT_JSON = "report.html", "report.json"
COLOURS = {"wait": "#d62728", "h2d": "#9467bd", "compute": "#1f77b4", "tail": "#2ca02c",
           "other": "#bbbbbb", "input": "#ff7f0e", "output": "#1f77b4"}
MAX_BARS = 400  # longer runs are bucketed so the SVG stays small


def _profile_dir(path: Path) -> Path:
    return resolve_profile_dir(path)


def write_report(profile_dir: Path) -> Path:
    """Write ``report.html`` and ``report.json`` into the profile folder; returns the HTML."""
    out = _profile_dir(profile_dir)
    summary = load_summary(out)
    analysis = analyze_summary(summary)
    steps = [json.loads(line) for line in (out / STEPS_FILE).read_text().splitlines() if line]
    ops = json.loads((out / OPS_FILE).read_text()) if (out / OPS_FILE).exists() else {}
    queue = _queue_series(out)
    (out / REPORT_JSON).write_text(json.dumps(
        {"analysis": analysis.to_json(), "operators": ops}, indent=2))
    html = render_html(analysis, steps, queue, ops)
    (out / REPORT_HTML).write_text(html)
    return out / REPORT_HTML


def _queue_series(out: Path) -> list[dict[str, float]]:
    try:
        events = json.loads((out / "trace.json").read_text())["traceEvents"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return []
    return [{"t": e["ts"] / 1e6, **e["args"]} for e in events
            if e.get("ph") == "C" and e.get("name") == "queue occupancy"]


def step_bars_svg(steps: list[dict[str, float]], width: int = 900, height: int = 220) -> str:
    if not steps:
        return "<p>no steps recorded</p>"
    size = max(1, -(-len(steps) // MAX_BARS))
    buckets = [steps[i:i + size] for i in range(0, len(steps), size)]
    rows = [{p: sum(s.get(p, 0.0) for s in b) / len(b) for p in PARTS} for b in buckets]
    top = max(sum(r.values()) for r in rows) or 1e-9
    bar = width / len(rows)
    shapes = []
    for i, row in enumerate(rows):
        y = float(height)
        for part in PARTS:
            h = row[part] / top * (height - 10)
            if h > 0:
                y -= h
                width_ = max(bar - 0.5, 0.5)
                shapes.append(f'<rect x="{i * bar:.2f}" y="{y:.2f}" width="{width_:.2f}"'
                              f' height="{h:.2f}" fill="{COLOURS[part]}"><title>step '
                              f'{i * size}: {part} {1000 * row[part]:.1f} ms</title></rect>')
    legend = " ".join(f'<span style="color:{COLOURS[p]}">■ {p}</span>' for p in PARTS)
    return (f'<svg width="{width}" height="{height}" '
            f'role="img">{"".join(shapes)}</svg><p>{legend} — tallest bar '
            f'{1000 * top:.1f} ms{f", {size} steps per bar" if size > 1 else ""}</p>')


def queue_svg(queue: list[dict[str, float]], width: int = 900, height: int = 160) -> str:
    if not queue:
        return "<p>no queue samples (the loader was not a DataLoader)</p>"
    t0, t1 = queue[0]["t"], queue[-1]["t"]
    span = (t1 - t0) or 1.0
    lines = []
    for key in ("input", "output"):
        points = " ".join(f"{(q['t'] - t0) / span * width:.1f},"
                          f"{height - q[key] * (height - 4) - 2:.1f}" for q in queue)
        lines.append(f'<polyline fill="none" stroke="{COLOURS[key]}" stroke-width="1.5" '
                     f'points="{points}"/>')
    return (f'<svg width="{width}" height="{height}">'
            f'<rect width="{width}" height="{height}" fill="#f7f7f7"/>{"".join(lines)}</svg>'
            f'<p><span style="color:{COLOURS["input"]}">■ worker input buffer</span> '
            f'<span style="color:{COLOURS["output"]}">■ prefetched batches</span> '
            "(fraction of prefetch_factor × num_workers; 0 to 1)</p>")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(r.get(c, '')))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_html(analysis: Analysis, steps: list[dict[str, float]],
                queue: list[dict[str, float]], ops: dict[str, Any]) -> str:
    s = analysis.summary
    parts = [{"part": p, "median ms": 1000 * s["parts"][p]["median_s"],
              "share": f"{s['parts'][p]['share']:.1%}"} for p in PARTS]
    stages = [{"stage": k, **v} for k, v in (s.get("pipeline") or {}).get("stages", {}).items()]
    advice = "".join(
        f"<li><b>[{escape(a.severity)}] {escape(a.title)}</b><br>evidence: {escape(a.evidence)}"
        f"<br>setting: <code>{escape(a.setting)}</code></li>" for a in analysis.advice)
    notes = "".join(f"<li>{escape(n)}</li>" for n in analysis.notes)
    ceiling = (f"{analysis.ceiling_samples_per_s:.1f} samples/s ({analysis.ceiling_source})"
               if analysis.ceiling_samples_per_s else "unknown")
    op_cols = ["name", "calls", "self_cpu_ms", "cpu_ms", "cpu_memory_mb"]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>modelmint training profile</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:960px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
code{{background:#f0f0f0}}</style></head><body>
<h1>Training profile</h1>
<p><b>{escape(analysis.classification)}</b> (severity {escape(analysis.severity)}):
data wait {analysis.wait_share:.1%} of step time; bottleneck stage:
<b>{escape(str(analysis.bottleneck_stage))}</b>. Throughput {analysis.samples_per_s:.1f}
samples/s; compute-only ceiling {escape(ceiling)}. {s['steps']} steps, median
{1000 * s['median_step_s']:.1f} ms.</p>
<h2>Advice</h2><ol>{advice or "<li>nothing to change</li>"}</ol><ul>{notes}</ul>
<h2>Step trace</h2>{step_bars_svg(steps)}{_table(parts, ["part", "median ms", "share"])}
<h2>Per-epoch trend</h2>{_table(s.get("epochs", []), ["epoch", "steps", "median_step_s",
                                                      "wait_share", "samples_per_s"])}
<h2>Data pipeline</h2>{queue_svg(queue)}
{_table(stages, ["stage", "seconds", "calls", "ms_per_sample"])}
<h2>Operators by type</h2>{_table(ops.get("by_type", [])[:25], op_cols)}
<h2>Operators by call site</h2>{_table(ops.get("by_call_site", [])[:25],
                                       ["call_site", *op_cols])}
<h2>Memory</h2>{_table([ops["peak_memory"]] if ops.get("peak_memory") else [],
                       list((ops.get("peak_memory") or {}).keys()))}
<h2>Environment</h2><pre>{escape(json.dumps(s.get("environment", {})))}
{escape(json.dumps(s.get("facts", {}), indent=1))}</pre>
</body></html>
"""
