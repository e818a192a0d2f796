"""An update window broken down by phase, from the ``phases`` lines of ``mint serve``'s log
(``--log-level info``; see ``modelmint._serve.phases``).

Each update's window (publish → 1 s after the old version is unloaded) is cut into:

    publishing the benchmark copies the model into the repository (its own work)
    waiting    → the poll thread sees the new version
    loading    worker process started, onnxruntime imported, session created
    warming    warm-up runs on the new worker, then its threads raised to normal priority
    switching  the switch → the old version starts draining
    draining   the old version's in-flight requests finish
    stopping   the old worker is stopped and reaped
    releasing  the front end gives freed memory back (malloc_trim)
    after      the rest of the window (1 s)

A request belongs to the phase its scheduled send time falls in. ``first_N`` is another cut
of the same requests: the first N sent after the switch (they run on the new worker). CPU is
what the phase cost the machine outside the request path: the loader thread of the front end
(``front``) and the worker processes of the version being loaded or unloaded (``workers``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ["publishing", "waiting", "loading", "warming", "switching", "draining", "stopping",
          "releasing", "after"]
FIRST_N = 20
WORST = 12  # the slowest requests of every window: their phase and how far into it


def read_steps(log: Path) -> list[dict[str, Any]]:
    """Every ``phases`` line of the server log, in order."""
    steps = []
    for line in log.read_text(errors="replace").splitlines():
        at = line.find("phases {")
        if at >= 0:
            steps.append(json.loads(line[at + len("phases "):]))
    return steps


class UnloadWatch:
    """The versions of ``model`` the server has unloaded, read from its log as it grows.

    Called every few ms during an update by a thread of the process that sends the requests:
    it reads only what was appended since (parsing the whole log each time grew to ~5 ms of
    GIL per call over a 300-update run, which delayed the requests it measures)."""

    def __init__(self, log: Path, model: str) -> None:
        self.log, self.model = log, model
        self.offset = 0
        self.partial = b""
        self.unloaded: set[int] = set()

    def __call__(self) -> set[int]:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            if b'"step": "unload"' in line:
                step = json.loads(line[line.index(b"phases {") + len(b"phases "):])
                if step["model"] == self.model:
                    self.unloaded.add(step["version"])
        return self.unloaded


def _cut(window: tuple[float, float], published: float | None, load: dict[str, Any] | None,
         unload: dict[str, Any] | None, offset: float
         ) -> tuple[list[tuple[str, float, float, tuple[float, float]]], float | None]:
    """(phase, start, end, cpu) in perf_counter time for one window; the switch time."""
    begin, end = window
    marks: list[tuple[str, float, tuple[float, float]]] = [("publishing", begin, (0.0, 0.0))]
    if published is not None:
        marks.append(("waiting", published, (0.0, 0.0)))
    switch = None
    for step in (load, unload):
        for name, wall, front, workers in (step or {}).get("marks", []):
            at, cpu = wall - offset, (front, workers)
            if name in ("ready", "failed"):
                switch, name = at, "switching"
            if name == "done":
                name = "after"
            marks.append((name, at, cpu))
    marks.sort(key=lambda m: m[1])
    out = []
    for i, (name, start, cpu) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else end
        out.append((name, start, max(start, stop), cpu))
    return out, switch


def breakdown(records: list[tuple[float, float, bool]], windows: list[tuple[float, float]],
              published: list[float | None], steps: list[dict[str, Any]], offset: float
              ) -> dict[str, dict[str, Any]]:
    """Per phase: requests, latency percentiles (ms), median duration and CPU per update."""
    loads = [s for s in steps if s["step"] == "load"]
    unloads = [s for s in steps if s["step"] == "unload"]
    latencies: dict[str, list[float]] = {p: [] for p in [*PHASES, f"first_{FIRST_N}"]}
    durations: dict[str, list[float]] = {p: [] for p in PHASES}
    fronts: dict[str, list[float]] = {p: [] for p in PHASES}
    workers: dict[str, list[float]] = {p: [] for p in PHASES}
    placed: list[tuple[float, str, float]] = []  # latency, phase, ms into the phase
    for window, done in zip(windows, published, strict=True):
        def inside(step: dict[str, Any], w: tuple[float, float] = window) -> bool:
            return w[0] <= step["marks"][0][1] - offset <= w[1]
        load = next((s for s in loads if inside(s)), None)
        unload = next((s for s in unloads if inside(s)), None)
        phases, switch = _cut(window, done, load, unload, offset)
        for name, start, stop, cpu in phases:
            durations[name].append((stop - start) * 1e3)
            fronts[name].append(cpu[0] * 1e3)
            workers[name].append(cpu[1] * 1e3)
            inside_phase = [(at, lat) for at, lat, ok in records if ok and start <= at < stop]
            latencies[name].extend(lat for _, lat in inside_phase)
            placed.extend((lat, name, (at - start) * 1e3) for at, lat in inside_phase)
        if switch is not None:
            after = sorted((at, lat) for at, lat, ok in records if ok and at >= switch)
            latencies[f"first_{FIRST_N}"].extend(lat for _, lat in after[:FIRST_N])

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1e3, 2) if values else None

    out: dict[str, dict[str, Any]] = {}
    for name, values in latencies.items():
        out[name] = {"requests": len(values), "p50_ms": pct(values, 50),
                     "p99_ms": pct(values, 99),
                     "max_ms": round(max(values) * 1e3, 2) if values else None}
        if durations.get(name):
            out[name]["duration_ms"] = round(float(np.median(durations[name])), 1)
            out[name]["front_cpu_ms"] = round(float(np.median(fronts[name])), 1)
            out[name]["worker_cpu_ms"] = round(float(np.median(workers[name])), 1)
    out["worst"] = {"requests": [[round(lat * 1e3, 1), name, round(into, 1)]
                                 for lat, name, into in sorted(placed, reverse=True)[:WORST]]}
    return out


def report(phases: dict[str, dict[str, Any]]) -> None:
    print(f"{'phase':12}{'requests':>9}{'p50':>8}{'p99':>8}{'max':>8}{'dur ms':>9}"
          f"{'front':>9}{'workers':>9}   (median duration and CPU ms per update)")
    for name, row in phases.items():
        if name == "worst":
            print("slowest (ms, phase, ms into it): " + ", ".join(
                f"{lat} {phase}+{into:.0f}" for lat, phase, into in row["requests"]))
            continue
        cells = [row.get(k) for k in ("requests", "p50_ms", "p99_ms", "max_ms",
                                       "duration_ms", "front_cpu_ms", "worker_cpu_ms")]
        widths = [9, 8, 8, 8, 9, 9, 9]
        print(f"{name:12}" + "".join(
            f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, widths, strict=True)))
