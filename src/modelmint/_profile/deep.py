"""Deep capture on demand: torch.profiler over a scheduled window of steps.

Writes ``profile/ops.json``: operator statistics by type and by call site (self/total CPU time,
calls, CUDA time when a GPU exists), peak memory; the raw Chrome trace events are handed back to
:func:`modelmint._profile.chrome.write_trace`, which merges them with the step trace and caps the
file (``max_trace_mb``).
"""

from __future__ import annotations

import json
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from ._torch_private import python_stacks_config

OPS_FILE = "ops.json"
TOP_OPS = 40


@dataclass
class DeepCaptureConfig:
    """Which steps torch.profiler records: skip ``wait``, warm up ``warmup``, record ``active``."""

    wait: int = 2
    warmup: int = 1
    active: int = 3
    with_stack: bool = True  # call sites for the by-call-site table (costs more while active)
    record_shapes: bool = False
    max_trace_mb: float = 50.0  # the Chrome/Perfetto trace JSON is capped at this size


class DeepCapture:
    def __init__(self, config: DeepCaptureConfig, out_dir: Path | None) -> None:
        self.config, self.out_dir = config, out_dir
        self.events: list[dict[str, Any]] = []
        self.base_unix_us = 0.0
        self.stats: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if config.with_stack:
            # Without verbose=True this torch records no Python stacks for operators.
            extra["experimental_config"] = python_stacks_config()
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=config.wait, warmup=config.warmup, active=config.active,
                              repeat=1),
            on_trace_ready=self._ready, record_shapes=config.record_shapes,
            profile_memory=True, with_stack=config.with_stack, **extra)
        self.profiler.__enter__()  # type: ignore[no-untyped-call]
        self._running = True

    def step(self) -> None:
        if self._running:
            self.profiler.step()

    def _ready(self, prof: profile) -> None:
        self.stats = operator_stats(prof, self.config.with_stack)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            data = json.loads(path.read_text())
        self.events = data.get("traceEvents", []) if isinstance(data, dict) else data
        # Kineto's ts are µs after baseTimeNanoseconds (a Unix time): together, wall-clock µs.
        self.base_unix_us = float(data.get("baseTimeNanoseconds", 0)) / 1e3 \
            if isinstance(data, dict) else 0.0
        self.stats["peak_memory"] = _peak_memory(self.events)

    def finish(self) -> list[dict[str, Any]]:
        if self._running:
            self._running = False
            self.profiler.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            stats = self.stats or {"note": "the run ended before the capture window "
                                   f"(steps {self.config.wait + self.config.warmup + 1}.."
                                   f"{self.config.wait + self.config.warmup + self.config.active}"
                                   ") completed"}
            (self.out_dir / OPS_FILE).write_text(json.dumps(stats, indent=2))
        return self.events


def _row(evt: Any) -> dict[str, Any]:
    row = {"name": evt.key, "calls": int(evt.count),
           "self_cpu_ms": evt.self_cpu_time_total / 1000, "cpu_ms": evt.cpu_time_total / 1000,
           "cpu_memory_mb": getattr(evt, "cpu_memory_usage", 0) / 2**20}
    device = getattr(evt, "self_device_time_total", 0) or 0
    if device:
        row["self_cuda_ms"] = device / 1000
    return row


def operator_stats(prof: profile, with_stack: bool) -> dict[str, Any]:
    by_type = sorted((_row(e) for e in prof.key_averages()
                      if not e.key.startswith("ProfilerStep")),  # the whole step, not an op
                     key=lambda r: -float(r["self_cpu_ms"]))[:TOP_OPS]
    by_site: list[dict[str, Any]] = []
    if with_stack:
        for evt in prof.key_averages(group_by_stack_n=6):
            frames = [f for f in (evt.stack or []) if not f.startswith("<built-in")]
            # The innermost frame outside torch itself; else the module's forward in torch.
            own = [f for f in frames if not f.startswith("torch/") and "site-packages" not in f]
            site = own[0] if own else frames[0] if frames else None
            if site:
                by_site.append({**_row(evt), "call_site": site})
        by_site.sort(key=lambda r: -float(r["self_cpu_ms"]))
    return {"by_type": by_type, "by_call_site": by_site[:TOP_OPS]}


def _peak_memory(events: list[dict[str, Any]]) -> dict[str, float]:
    allocated = [e.get("args", {}).get("Total Allocated", 0) for e in events
                 if e.get("name") == "[memory]"]
    peak = {"profiler_peak_allocated_mb": max(allocated, default=0) / 2**20,
            "process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
