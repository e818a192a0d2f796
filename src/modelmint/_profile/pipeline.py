"""An observable data pipeline: per-stage time inside DataLoader workers, queue occupancy.

torch's DataLoader is instrumented, not replaced (:func:`instrument_loader` returns a
DataLoader built from the same sampler and settings):

- the dataset is wrapped so every ``__getitem__`` is timed, and the stages inside it
  (``read``, ``decode``, ``transform``) are timed by :func:`stage` blocks in the dataset's own
  code, or automatically when the dataset has torchvision's ``loader`` (read + decode) and
  ``transform`` attributes; ``collate_fn`` is timed as ``batch``; ``to-device`` is the step
  trace's ``h2d`` phase. Whatever ``__getitem__`` spends outside the named stages is ``other``.
- every worker (and the main process, row 0) adds its times to one shared-memory array
  (``multiprocessing.RawArray``: no pickling, no queue), so the trainer reads live totals.
- queue occupancy is sampled at every ``next()``: the worker input buffer (index queues, tasks
  sent and not yet done) and output buffer (batches done, not yet consumed), each as a fraction
  of ``prefetch_factor × num_workers``. torch keeps these counts private (read in
  :mod:`._torch_private`); when a torch version moves them, occupancy is simply not recorded.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from types import TracebackType
from typing import Any

from torch.utils.data import DataLoader, Dataset, get_worker_info

from ._torch_private import prefetch_counts

STAGES = ("read", "decode", "transform", "batch", "other")
MAX_WORKER_ROWS = 65  # row 0: the main process; rows 1..64: workers
_FIELDS = 2 * len(STAGES) + 1  # per stage: seconds, calls; then samples
_ACTIVE: StageRecorder | None = None  # the recorder of the dataset being read in this process


class StageRecorder:
    """Per-process, per-stage seconds and call counts in shared memory."""

    def __init__(self) -> None:
        self.array = multiprocessing.RawArray("d", MAX_WORKER_ROWS * _FIELDS)
        self.named = 0.0  # this process's seconds in named stages (a plain float: fast)

    def row(self) -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (MAX_WORKER_ROWS - 1)

    def add(self, name: str, seconds: float, row: int | None = None) -> None:
        base = (self.row() if row is None else row) * _FIELDS + 2 * STAGES.index(name)
        self.array[base] += seconds
        self.array[base + 1] += 1
        self.named += seconds

    def add_sample(self, row: int) -> None:
        self.array[row * _FIELDS + _FIELDS - 1] += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals over all processes: seconds and calls per stage, per-sample milliseconds."""
        values = list(self.array)
        rows = [values[r * _FIELDS:(r + 1) * _FIELDS] for r in range(MAX_WORKER_ROWS)]
        samples = sum(r[-1] for r in rows)
        stages = {}
        for i, name in enumerate(STAGES):
            seconds = sum(r[2 * i] for r in rows)
            calls = sum(r[2 * i + 1] for r in rows)
            stages[name] = {"seconds": seconds, "calls": calls,
                            "ms_per_sample": 1000 * seconds / samples if samples else 0.0}
        busy = [r for r in range(MAX_WORKER_ROWS) if rows[r][-1] > 0]
        return {"samples": samples, "stages": stages, "processes": len(busy),
                "in_main_process": busy == [0]}


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several loaders (e.g. a new instrumented DataLoader per epoch)."""
    if len(snapshots) <= 1:
        return snapshots[0] if snapshots else {}
    samples = sum(s["samples"] for s in snapshots)
    stages = {}
    for name in STAGES:
        seconds = sum(s["stages"][name]["seconds"] for s in snapshots)
        stages[name] = {"seconds": seconds,
                        "calls": sum(s["stages"][name]["calls"] for s in snapshots),
                        "ms_per_sample": 1000 * seconds / samples if samples else 0.0}
    return {"samples": samples, "stages": stages,
            "processes": max(s["processes"] for s in snapshots),
            "in_main_process": all(s["in_main_process"] for s in snapshots)}


class stage:  # lower case: used like a function, ``with stage("decode"): ...``
    """Time a block of a dataset's ``__getitem__`` as one pipeline stage.

    A no-op (one global read) when the dataset is not instrumented.
    """

    __slots__ = ("name", "started")

    def __init__(self, name: str) -> None:
        self.name, self.started = name, 0.0

    def __enter__(self) -> None:
        self.started = perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if _ACTIVE is not None:
            _ACTIVE.add(self.name, perf_counter() - self.started)


class _Timed:
    """Wrap a callable attribute (torchvision's ``loader``/``transform``) as one stage."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with stage(self.name):
            return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self.fn)


class InstrumentedDataset(Dataset[Any]):
    def __init__(self, dataset: Dataset[Any], recorder: StageRecorder) -> None:
        self.dataset, self.recorder = dataset, recorder

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> Any:
        global _ACTIVE
        _ACTIVE = self.recorder
        row = self.recorder.row()
        before = self.recorder.named
        started = perf_counter()
        item = self.dataset[index]
        elapsed = perf_counter() - started
        named = self.recorder.named - before
        self.recorder.add("other", max(0.0, elapsed - named), row)
        self.recorder.add_sample(row)
        return item

    def __getattr__(self, name: str) -> Any:  # classes, targets... of the original
        if "dataset" not in self.__dict__:  # while unpickling in a worker
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)


class _TimedCollate:
    def __init__(self, fn: Callable[[list[Any]], Any], recorder: StageRecorder) -> None:
        self.fn, self.recorder = fn, recorder

    def __call__(self, samples: list[Any]) -> Any:
        started = perf_counter()
        out = self.fn(samples)
        self.recorder.add("batch", perf_counter() - started)
        return out


class InstrumentedDataLoader(DataLoader[Any]):
    """A torch DataLoader whose dataset and collate function report stage times."""

    stage_recorder: StageRecorder
    original: DataLoader[Any]


def instrument_loader(dataloader: DataLoader[Any]) -> DataLoader[Any]:
    """The same DataLoader (sampler, workers, prefetch, pinning...) with per-stage timing."""
    if isinstance(dataloader, InstrumentedDataLoader):
        return dataloader
    recorder = StageRecorder()
    dataset = copy.copy(dataloader.dataset)  # the caller's object keeps its own attributes
    # A dataset that times its own stages (stage() blocks) must not be timed twice.
    wrap = () if getattr(dataset, "times_own_stages", False) else (
        ("loader", "decode"), ("transform", "transform"))
    for attr, name in wrap:
        fn = getattr(dataset, attr, None)
        if callable(fn) and not isinstance(fn, _Timed):
            setattr(dataset, attr, _Timed(fn, name))
    wrapped = InstrumentedDataset(dataset, recorder)
    kwargs: dict[str, Any] = {
        "num_workers": dataloader.num_workers, "pin_memory": dataloader.pin_memory,
        "timeout": dataloader.timeout, "worker_init_fn": dataloader.worker_init_fn,
        "multiprocessing_context": dataloader.multiprocessing_context,
        "generator": dataloader.generator,
        "persistent_workers": dataloader.persistent_workers,
        "pin_memory_device": dataloader.pin_memory_device,
        "collate_fn": _TimedCollate(dataloader.collate_fn, recorder),
    }
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
    if dataloader.batch_size is not None:
        kwargs.update(batch_size=dataloader.batch_size, sampler=dataloader.sampler,
                      drop_last=dataloader.drop_last)
    else:
        kwargs.update(batch_sampler=dataloader.batch_sampler)
    loader = InstrumentedDataLoader(wrapped, **kwargs)
    loader.stage_recorder = recorder
    loader.original = dataloader
    return loader


def recorder_of(loader: object) -> StageRecorder | None:
    return getattr(loader, "stage_recorder", None)


def loader_facts(loader: object) -> dict[str, Any]:
    """The settings the advisor reasons about."""
    if not isinstance(loader, DataLoader):
        return {"loader": type(loader).__name__}
    dataset = loader.dataset
    if isinstance(dataset, InstrumentedDataset):
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, _Timed):
        transform = transform.fn
    return {"loader": "DataLoader", "num_workers": loader.num_workers,
            "batch_size": loader.batch_size, "pin_memory": loader.pin_memory,
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
            "dataset": type(dataset).__name__,
            "transform": describe_transform(transform),
            "dataset_facts": dict(getattr(dataset, "profile_facts", {}) or {}),
            "cores": len(os.sched_getaffinity(0))}


def describe_transform(transform: object) -> dict[str, Any]:
    """Which transforms run per sample, and whether they are PIL-based (torchvision v1)."""
    if transform is None:
        return {}
    ops = list(getattr(transform, "transforms", [transform]))
    names = [type(op).__name__ for op in ops]
    modules = {type(op).__module__ for op in ops}
    pil = any(m.startswith("torchvision.transforms.transforms") for m in modules) or \
        "ToTensor" in names
    return {"ops": names, "pil_per_sample": pil,
            "v2": any(m.startswith("torchvision.transforms.v2") for m in modules)}


class QueueSampler:
    """Reads the prefetch buffers of a DataLoader iterator at each ``next()``."""

    def __init__(self, loader: Iterable[Any], iterator: Iterator[Any]) -> None:
        self.iterator = iterator
        workers = getattr(loader, "num_workers", None)
        self.workers = workers if isinstance(workers, int) else None
        prefetch = getattr(loader, "prefetch_factor", None) or 0
        self.capacity = max(1, prefetch * (self.workers or 0))

    def sample(self, t: float, into: list[dict[str, float]]) -> None:
        if self.workers is None:
            return
        if self.workers == 0:
            # In-process loading: the sampler's indices are always there (input full) and
            # nothing is ever prefetched (output empty): the source stage is the bottleneck.
            into.append({"t": t, "input": 1.0, "output": 0.0})
            return
        counts = prefetch_counts(self.iterator)
        if counts is None:
            return
        outstanding, ready = counts
        into.append({"t": t, "input": (outstanding - ready) / self.capacity,
                     "output": ready / self.capacity})
