"""The Chrome / Perfetto trace (``profile/trace.json``): step parts as slices, queue occupancy
as counters, and torch.profiler's events when deep capture ran. Open it in
``chrome://tracing`` or https://ui.perfetto.dev (the file itself loads nothing from the web).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEP_PID = 1  # our own rows; torch.profiler uses real process ids


def step_events(steps: list[dict[str, float]],
                queue: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Each step is one slice on thread 1 with its parts nested beneath (ts/dur in µs)."""
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": STEP_PID, "tid": 0, "ts": 0, "name": "process_name",
         "args": {"name": "modelmint step trace"}},
    ]
    for i, step in enumerate(steps):
        start = step["t"] * 1e6
        events.append({"ph": "X", "pid": STEP_PID, "tid": 1, "ts": round(start, 3),
                       "dur": round(step["total"] * 1e6, 3), "name": f"step {i}",
                       "cat": "step", "args": {"samples": step["samples"],
                                               "epoch": step["epoch"]}})
        # Parts in their usual order; the loop may interleave them, so these are durations
        # laid end to end, not exact timestamps.
        offset = start
        for part in ("wait", "h2d", "compute", "tail", "other"):
            dur = step.get(part, 0.0) * 1e6
            if dur > 0:
                events.append({"ph": "X", "pid": STEP_PID, "tid": 1, "ts": round(offset, 3),
                               "dur": round(dur, 3), "name": part, "cat": "part"})
                offset += dur
    for sample in queue:
        events.append({"ph": "C", "pid": STEP_PID, "tid": 2, "ts": round(sample["t"] * 1e6, 3),
                       "name": "queue occupancy",
                       "args": {"input": sample["input"], "output": sample["output"]}})
    return events


def write_trace(path: Path, steps: list[dict[str, float]], queue: list[dict[str, float]],
                deep_events: list[dict[str, Any]], max_mb: float = 50.0,
                shift_us: float = 0.0) -> dict[str, Any]:
    """Write the merged trace; drop torch events beyond ``max_mb`` (ours are always kept).

    ``shift_us`` moves torch's events onto our timeline (µs since the tracer's origin), so a
    ``ProfilerStep#N`` slice lines up with our step N."""
    ours = step_events(steps, queue)
    budget = int(max_mb * 2**20) - len(json.dumps(ours)) - 200
    kept: list[dict[str, Any]] = []
    dropped = 0
    for event in deep_events:
        size = len(json.dumps(event)) + 2
        if size > budget:
            dropped += 1
            continue
        budget -= size
        if shift_us and isinstance(event.get("ts"), int | float):
            event = {**event, "ts": round(float(event["ts"]) + shift_us, 3)}
        kept.append(event)
    meta = {"source": "modelmint", "torch_events": len(kept), "dropped_events": dropped,
            "cap_mb": max_mb}
    path.write_text(json.dumps({"traceEvents": ours + kept, "displayTimeUnit": "ms",
                                "otherData": meta}))
    return meta
