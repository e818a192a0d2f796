"""The only module that reads torch's private API. Written against torch 2.14.

torch has no public way to do what these functions do, so each one reaches into an internal
that a torch release may rename without notice; keeping them here means an upgrade has one
file to re-check (``tests/profile/test_torch_private.py`` pins the version and exercises each
one):

- how full a multi-process DataLoader's prefetch buffers are (``_MultiProcessingDataLoaderIter``
  keeps ``_tasks_outstanding``, ``_task_info`` and ``_data_queue`` to itself);
- ending a loader's persistent workers without ending the loader (it holds them in
  ``DataLoader._iterator``);
- asking the profiler for Python stacks on operators (``_ExperimentalConfig(verbose=True)``:
  the ``experimental_config`` argument is public, its only type is not);
- which ATen operators the ONNX exporter translates (its torchlib registry lives in
  ``torch.onnx._internal``; the decomposition table in ``torch._decomp``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.data import DataLoader

WRITTEN_FOR_TORCH = "2.14."


def prefetch_counts(iterator: object) -> tuple[int, int] | None:
    """``(outstanding, ready)`` of a multi-process DataLoader iterator: index batches sent to
    the workers and not yet consumed, and how many of them are done (a finished batch waiting
    in the iterator's reorder buffer or in the result queue). ``None`` for an iterator without
    workers, or a torch whose iterator keeps these elsewhere."""
    try:
        state: Any = iterator
        outstanding = int(state._tasks_outstanding)
        # A task's entry is (worker,) while it runs and (worker, batch) once done out of order.
        done = sum(1 for v in state._task_info.values() if len(v) == 2)
        queued = int(state._data_queue.qsize())
    except (AttributeError, NotImplementedError):  # no workers; qsize() on macOS
        return None
    return outstanding, min(outstanding, done + queued)


def release_persistent_workers(loader: DataLoader[Any]) -> None:
    """End a loader's persistent worker processes now: the iterator that owns them shuts
    them down when the loader drops it, and the next ``iter(loader)`` starts fresh ones."""
    loader._iterator = None


def python_stacks_config() -> object:
    """The ``experimental_config`` that makes ``torch.profiler.profile(with_stack=True)``
    record Python call stacks for operators (without it this torch records none)."""
    from torch._C._profiler import _ExperimentalConfig

    return _ExperimentalConfig(verbose=True)


@functools.cache
def _onnx_translation_tables() -> tuple[Any, Any]:
    from torch._decomp import decomposition_table
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(), decomposition_table


def onnx_translates(target: object) -> bool:
    """Whether ``torch.onnx.export`` translates this FX call target: an ATen operator
    registered in its torchlib registry or decomposed by it into such operators."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return False
    registry, decompositions = _onnx_translation_tables()
    # CompositeImplicitAutograd ops (batch_norm, adaptive_avg_pool2d, ...) have no kernel of
    # their own: export's decomposition turns them into operators that are registered.
    return (bool(registry.is_registered(target)) or target in decompositions
            or target.has_kernel_for_dispatch_key(torch.DispatchKey.CompositeImplicitAutograd))
