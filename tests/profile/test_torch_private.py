"""torch's private API, read in one module: each use still works on the installed torch."""

from __future__ import annotations

import gc
import multiprocessing
import operator
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from modelmint._profile._torch_private import (
    WRITTEN_FOR_TORCH,
    onnx_translates,
    prefetch_counts,
    python_stacks_config,
    release_persistent_workers,
)

WORKERS, PREFETCH = 2, 2


def test_torch_is_the_version_the_private_reads_were_checked_against() -> None:
    assert torch.__version__.startswith(WRITTEN_FOR_TORCH), (
        f"torch {torch.__version__} is installed; modelmint/_profile/_torch_private.py reads "
        f"private torch attributes checked on torch {WRITTEN_FOR_TORCH}x. Re-check each one "
        "against the new torch (this file exercises them), then update WRITTEN_FOR_TORCH.")


def test_prefetch_counts_see_the_workers_fill_their_buffers() -> None:
    loader = DataLoader(list(range(64)), batch_size=2, num_workers=WORKERS,
                        prefetch_factor=PREFETCH)
    iterator = iter(loader)
    next(iterator)
    deadline = time.monotonic() + 30
    while True:
        counts = prefetch_counts(iterator)
        assert counts is not None
        outstanding, ready = counts
        assert outstanding == WORKERS * PREFETCH and 0 <= ready <= outstanding
        if ready == outstanding or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ready == outstanding, "the workers never finished the batches they were sent"
    del iterator
    assert prefetch_counts(iter(DataLoader(list(range(4)), num_workers=0))) is None


def test_releasing_persistent_workers_ends_their_processes() -> None:
    before = set(multiprocessing.active_children())
    loader = DataLoader(list(range(8)), batch_size=4, num_workers=1, persistent_workers=True)
    assert [len(b) for b in loader] == [4, 4]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 1
    release_persistent_workers(loader)
    gc.collect()
    deadline = time.monotonic() + 30
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers)
    assert [len(b) for b in loader] == [4, 4]  # a fresh iterator starts fresh workers
    release_persistent_workers(loader)


def test_python_stacks_config_records_operator_call_sites() -> None:
    with profile(activities=[ProfilerActivity.CPU], with_stack=True,
                 experimental_config=python_stacks_config()) as prof:  # type: ignore[arg-type]
        torch.mm(torch.ones(8, 8), torch.ones(8, 8))
    stacks = [frame for event in prof.events() if event.name == "aten::mm"
              for frame in event.stack]
    assert any(Path(__file__).name in frame for frame in stacks), stacks[:5]


def test_onnx_translates_registered_and_decomposable_aten_ops_only() -> None:
    aten = torch.ops.aten
    assert onnx_translates(aten.add.Tensor)  # in the torchlib registry
    assert onnx_translates(aten.batch_norm.default)  # CompositeImplicitAutograd: decomposed
    assert not onnx_translates(aten._foreach_add.List)  # neither
    assert not onnx_translates(aten.add)  # an overload packet, not an overload
    assert not onnx_translates(operator.add)
