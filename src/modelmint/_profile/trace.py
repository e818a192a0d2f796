"""The always-on step trace: every training step split into its parts.

A step runs from the moment the previous one ended (or the epoch's first ``next()``) to
:meth:`StepTracer.end_step`. Its parts are ``wait`` (time blocked in the loader's ``next()``,
MindInsight's "step gap"), the phases the loop marks (``h2d``, ``compute``, ``tail``) and
``other`` (everything unmarked: logging, the loop itself), so the parts always sum to the step.

Cost: two ``perf_counter`` calls per phase and a small dict per step (measured in
``benchmarks/profile_autotune.py``: a few microseconds a step, far below 2 % of any real step).
Everything is kept in memory and written once by :meth:`StepTracer.close`.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from time import perf_counter, time_ns
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .pipeline import QueueSampler, loader_facts, merge_snapshots, recorder_of

if TYPE_CHECKING:
    from .deep import DeepCapture, DeepCaptureConfig

T = TypeVar("T")
PHASES = ("h2d", "compute", "tail")
PARTS = ("wait", *PHASES, "other")
PROFILE_DIR = "profile"
STEPS_FILE = "steps.jsonl"
SUMMARY_FILE = "summary.json"
TRACE_FILE = "trace.json"


class _Phase:
    """A reusable context manager (cheaper than ``contextlib.contextmanager``)."""

    __slots__ = ("name", "started", "tracer")

    def __init__(self, tracer: StepTracer, name: str) -> None:
        self.tracer, self.name, self.started = tracer, name, 0.0

    def __enter__(self) -> None:
        self.started = perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        parts = self.tracer._current
        parts[self.name] = parts.get(self.name, 0.0) + perf_counter() - self.started


class StepTracer:
    """Split each training step into wait / h2d / compute / tail / other.

    ``run_dir``: where ``profile/`` is written on :meth:`close` (``None``: keep in memory only).
    ``deep``: run torch.profiler over a scheduled window of steps as well.
    """

    def __init__(self, run_dir: Path | None = None, deep: DeepCaptureConfig | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.steps: list[dict[str, float]] = []
        self.queue_samples: list[dict[str, float]] = []
        self.facts: dict[str, Any] = {}
        self.epoch = -1
        self._current: dict[str, float] = {}
        self._step_started: float | None = None
        self._origin = perf_counter()
        self._origin_unix_us = time_ns() / 1e3  # the same instant on the wall clock
        self._phases: dict[str, _Phase] = {}
        self._loaders: list[Any] = []
        self._deep: DeepCapture | None = None
        self._closed = False
        if deep is not None:
            from .deep import DeepCapture
            self._deep = DeepCapture(deep, self._profile_dir())

    # -- the loop's calls ------------------------------------------------------------------
    def loader(self, iterable: Iterable[T]) -> Iterator[T]:
        """Iterate ``iterable`` (a DataLoader or anything), timing each ``next()`` as wait.
        Each call starts a new epoch in the trend."""
        self.epoch += 1
        self._current, self._step_started = {}, None  # a step cut short (e.g. a deadline)
        if not any(existing is iterable for existing in self._loaders):
            self.facts.update(loader_facts(iterable))
            if recorder_of(iterable) is not None:  # keep only what has stage timings
                self._loaders.append(iterable)
        iterator = iter(iterable)
        sampler = QueueSampler(iterable, iterator)
        checked_layout = False
        while True:
            started = perf_counter()
            if self._step_started is None:
                self._step_started = started
            sampler.sample(started - self._origin, self.queue_samples)
            try:
                batch = next(iterator)
            except StopIteration:
                self._step_started = None  # the epoch's end is not part of any step
                return
            self._current["wait"] = self._current.get("wait", 0.0) + perf_counter() - started
            if not checked_layout:
                checked_layout = True
                self.facts.update(_batch_facts(batch))
            yield batch

    def phase(self, name: str) -> _Phase:
        """``with tracer.phase("compute"): ...`` adds the block's time to this step's part."""
        found = self._phases.get(name)
        if found is None:
            found = self._phases[name] = _Phase(self, name)
        return found

    def end_step(self, samples: int) -> None:
        now = perf_counter()
        started = self._step_started if self._step_started is not None else now
        record = self._current
        for name in [k for k in record if k not in PARTS]:  # unknown phases count as other
            record.pop(name)
        total = now - started
        record["other"] = max(0.0, total - sum(record.values()))
        for part in PARTS:  # every record has every part, unmarked ones as 0
            record.setdefault(part, 0.0)
        record["total"] = total
        record["t"] = started - self._origin
        record["samples"] = float(samples)
        record["epoch"] = float(self.epoch)
        self.steps.append(record)
        self._current = {}
        self._step_started = now
        if self._deep is not None:
            self._deep.step()

    def note(self, **facts: Any) -> None:
        """Record facts the advisor uses (e.g. ``channels_last=False``, ``model="..."``)."""
        self.facts.update(facts)

    # -- statistics ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return summarize(self.steps, self.facts, self._pipeline_stats(), self.queue_samples)

    def _pipeline_stats(self) -> dict[str, Any]:
        recorders = [r for r in map(recorder_of, self._loaders) if r is not None]
        return merge_snapshots([r.snapshot() for r in recorders])

    # -- output ----------------------------------------------------------------------------
    def _profile_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / PROFILE_DIR

    def close(self) -> Path | None:
        """Stop deep capture and write ``profile/`` (steps, summary, Chrome trace)."""
        if self._closed:
            return self._profile_dir()
        self._closed = True
        deep_events: list[dict[str, Any]] = []
        shift_us = 0.0
        if self._deep is not None:
            deep_events = self._deep.finish()
            if self._deep.base_unix_us:  # torch's timeline onto ours (µs since the origin)
                shift_us = self._deep.base_unix_us - self._origin_unix_us
        out = self._profile_dir()
        if out is None:
            return None
        out.mkdir(parents=True, exist_ok=True)
        with (out / STEPS_FILE).open("w") as fh:
            for record in self.steps:
                fh.write(json.dumps({k: round(v, 7) for k, v in record.items()}) + "\n")
        (out / SUMMARY_FILE).write_text(json.dumps(self.summary(), indent=2))
        from .chrome import write_trace
        cap = self._deep.config.max_trace_mb if self._deep is not None else 50.0
        write_trace(out / TRACE_FILE, self.steps, self.queue_samples, deep_events, cap,
                    shift_us)
        return out

    def __enter__(self) -> StepTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batch_facts(batch: Any) -> dict[str, Any]:
    """Memory layout of the first 4-D tensor in a batch (for the channels_last advice)."""
    import torch
    items = batch if isinstance(batch, list | tuple) else [batch]
    for item in items:
        if isinstance(item, torch.Tensor) and item.dim() == 4:
            return {"input_channels_last": bool(
                item.is_contiguous(memory_format=torch.channels_last) and item.shape[1] > 1),
                "input_shape": list(item.shape), "input_dtype": str(item.dtype)}
    return {}


def summarize(steps: list[dict[str, float]], facts: dict[str, Any],
              pipeline: dict[str, Any], queue: list[dict[str, float]]) -> dict[str, Any]:
    """Medians and shares of each part, per epoch trend, queue occupancy and the environment."""
    import torch
    steady = steps[1:] if len(steps) > 2 else steps  # the first step pays warm-up costs
    total = sum(s["total"] for s in steady) or 1e-12
    samples = sum(s["samples"] for s in steady)
    parts = {p: {"median_s": statistics.median([s.get(p, 0.0) for s in steady]) if steady
                 else 0.0,
                 "share": sum(s.get(p, 0.0) for s in steady) / total} for p in PARTS}
    epochs: dict[int, list[dict[str, float]]] = {}
    for s in steps:
        epochs.setdefault(int(s["epoch"]), []).append(s)
    trend = [{"epoch": e, "steps": len(rows),
              "median_step_s": statistics.median(r["total"] for r in rows),
              "wait_share": sum(r.get("wait", 0.0) for r in rows) /
              (sum(r["total"] for r in rows) or 1e-12),
              "samples_per_s": sum(r["samples"] for r in rows) /
              (sum(r["total"] for r in rows) or 1e-12)} for e, rows in sorted(epochs.items())]
    occupancy = {}
    for key in ("input", "output"):
        values = [q[key] for q in queue if key in q]
        if values:
            occupancy[key] = statistics.fmean(values)
    return {
        "steps": len(steps), "steady_steps": len(steady),
        "median_step_s": statistics.median(s["total"] for s in steady) if steady else 0.0,
        "samples_per_s": samples / total, "parts": parts, "epochs": trend,
        "queue_occupancy": occupancy, "pipeline": pipeline, "facts": facts,
        "environment": {"cuda": bool(torch.cuda.is_available()),
                        "cores": len(os.sched_getaffinity(0)),
                        "torch_threads": torch.get_num_threads(),
                        "processes": _world_size()},
    }


def _world_size() -> int:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))
