"""Profiler overhead by the cost-per-event method: what the step trace and the pipeline
instrumentation add per step, measured on no-op work (many repetitions, median of several
runs), divided by a real step's median time. Unlike on/off rounds on a shared 2-core machine,
this does not drown in load noise; its blind spot is cache effects on the real work, which at a
few microseconds per step are far below anything measurable.
"""

from __future__ import annotations

import statistics
from time import perf_counter
from typing import Any

from torch.utils.data import Dataset

from .pipeline import InstrumentedDataset, StageRecorder, stage
from .trace import StepTracer


class _Sample(Dataset[int]):
    """A dataset doing nothing but its stage blocks (as the workload's dataset has)."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> int:
        for name in ("read", "decode", "transform", "transform"):
            with stage(name):
                pass
        return index


def _per_step_seconds(repeats: int) -> float:
    tracer = StepTracer()
    items = list(range(repeats))
    started = perf_counter()
    for _ in tracer.loader(items):
        with tracer.phase("h2d"):
            pass
        with tracer.phase("compute"):
            pass
        with tracer.phase("tail"):
            pass
        tracer.end_step(samples=1)
    return (perf_counter() - started) / repeats


def _per_sample_seconds(repeats: int) -> float:
    plain, wrapped = _Sample(), InstrumentedDataset(_Sample(), StageRecorder())
    started = perf_counter()
    for i in range(repeats):
        plain[i]
    bare = perf_counter() - started
    started = perf_counter()
    for i in range(repeats):
        wrapped[i]
    # The plain dataset's stage() blocks are no-ops without a recorder; the difference is
    # the instrumentation (the stage blocks themselves count as instrumentation too).
    return max(0.0, perf_counter() - started - bare) / repeats + bare / repeats


def overhead(step_seconds: float, samples_per_step: int, repeats: int = 20000,
             runs: int = 5) -> dict[str, Any]:
    per_step = statistics.median(_per_step_seconds(repeats) for _ in range(runs))
    per_sample = statistics.median(_per_sample_seconds(repeats) for _ in range(runs))
    cost = per_step + samples_per_step * per_sample
    return {"method": "cost per event x events per step", "per_step_us": 1e6 * per_step,
            "per_sample_us": 1e6 * per_sample, "samples_per_step": samples_per_step,
            "cost_per_step_us": 1e6 * cost, "step_ms": 1000 * step_seconds,
            "overhead_pct": 100 * cost / step_seconds if step_seconds else 0.0}
