"""Latency of inference candidates, measured in interleaved rounds.

On a shared 2-core machine run-to-run noise is 15-35 %, far more than some of the differences we
choose between. Measuring candidate A fully and then B would attribute a noisy minute to one of
them; instead every round times every candidate (in a rotated order) at every batch size, so
noise hits all alike, and the spread of the per-round medians is reported next to p50/p99.
Warm-up calls (lazy kernel selection, allocator growth) are run first and never timed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

Runner = Callable[[np.ndarray], Any]


@dataclass
class Candidate:
    """One way to run the model: an engine, a precision, and (for ONNX) the graph it runs."""

    name: str
    engine: str  # "onnxruntime" | "torch"
    precision: str  # "fp32" | "int8"
    run: Runner
    onnx_path: str | None = None  # the publishable graph; None for torch paths
    notes: list[str] = field(default_factory=list)


@dataclass
class Timing:
    p50_ms: float
    p99_ms: float
    spread: float  # (max - min) / median of the per-round medians
    samples: int

    def to_json(self) -> dict[str, float | int]:
        return {"p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
                "spread": round(self.spread, 3), "samples": self.samples}


def ort_session(path: str, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel
                .ORT_ENABLE_ALL, threads: int | None = None, spinning: bool = False) -> Any:
    """A CPU session with the server's settings by default (all cores, no spinning: see
    serve/dataplane.py), so the numbers are what the served version will see."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_runner(session: Any, output: str = "logits") -> Runner:
    def run(x: np.ndarray) -> Any:
        return session.run([output], {"input": x})[0]
    return run


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(candidates: Sequence[Candidate], batches: Sequence[int], sample: np.ndarray,
            rounds: int = 5, iters: int = 5, warmup: int = 2,
            tick: Callable[[], None] | None = None) -> dict[str, dict[int, Timing]]:
    """p50/p99 per candidate and batch size over ``rounds`` interleaved rounds of ``iters``
    timed calls each. ``sample`` holds at least ``max(batches)`` preprocessed images."""
    inputs = {b: np.ascontiguousarray(np.resize(sample, (b, *sample.shape[1:]))) for b in batches}
    for cand in candidates:
        for b in batches:
            for _ in range(warmup):
                cand.run(inputs[b])
    times: dict[tuple[str, int], list[float]] = {(c.name, b): [] for c in candidates
                                                 for b in batches}
    medians: dict[tuple[str, int], list[float]] = {key: [] for key in times}
    for r in range(rounds):
        order = list(candidates[r % len(candidates):]) + list(candidates[:r % len(candidates)])
        for cand in order:
            for b in batches:
                round_times = []
                for _ in range(iters):
                    start = time.perf_counter()
                    cand.run(inputs[b])
                    round_times.append((time.perf_counter() - start) * 1000.0)
                times[(cand.name, b)].extend(round_times)
                medians[(cand.name, b)].append(_percentile(round_times, 50))
        if tick is not None:
            tick()
    out: dict[str, dict[int, Timing]] = {c.name: {} for c in candidates}
    for (name, b), values in times.items():
        p50 = _percentile(values, 50)
        per_round = medians[(name, b)]
        spread = (max(per_round) - min(per_round)) / p50 if p50 > 0 else 0.0
        out[name][b] = Timing(p50, _percentile(values, 99), spread, len(values))
    return out


def per_image_ms(timings: dict[int, Timing]) -> float:
    """The selection score: per-image p50 averaged over the batch sizes, so a candidate must be
    good both for single requests (latency) and for batches (throughput)."""
    return float(np.mean([t.p50_ms / b for b, t in timings.items()]))
