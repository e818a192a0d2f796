"""Warm-up: a version's recorded requests, replayed on an executor before it takes traffic,
so that lazy initialisation (ONNX Runtime allocates and tunes on its first runs) never lands
on live requests. Every instance of a version is warmed, at load and at each restart."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from ..errors import MintError, RepositoryError

if TYPE_CHECKING:
    from .executors import Executor
    from .model import LoadedModel

WARMUP_CAP_S = 10.0
WARMUP_RUN_TIMEOUT_S = 120.0  # one run, even at idle priority on a saturated CPU
WARMUP_WINDOW = 5
WARMUP_TOLERANCE = 0.10


def warmup(model: LoadedModel, executor: Executor, cap_s: float = WARMUP_CAP_S) -> int:
    """Replay the version's warmup requests until latency is stable; returns the run count.

    Every recorded request must succeed: a version that cannot answer its own recorded request
    is never served."""
    requests = model.warmup_requests()
    if not requests:
        return 0
    try:
        # Decoded and preprocessed once: that part runs in the serving process at normal
        # priority, so repeating it would compete with live requests; only the worker's
        # session needs warming.
        batches = [model.prepare(request) for request in requests]
    except MintError as exc:
        raise RepositoryError(f"{model.ref.path}: warmup request failed: {exc}") from exc
    latencies: list[float] = []
    deadline = time.monotonic() + cap_s
    while True:
        index = len(latencies) % len(requests)
        started = time.perf_counter()
        try:
            probabilities = executor.run(batches[index]).result(WARMUP_RUN_TIMEOUT_S)
            if len(latencies) < len(requests):  # every recorded request answered once
                model.respond(requests[index], probabilities)
        except MintError as exc:
            raise RepositoryError(f"{model.ref.path}: warmup request failed: {exc}") from exc
        latencies.append(time.perf_counter() - started)
        if len(latencies) >= max(2 * WARMUP_WINDOW, len(requests)):
            last = statistics.median(latencies[-WARMUP_WINDOW:])
            previous = statistics.median(latencies[-2 * WARMUP_WINDOW:-WARMUP_WINDOW])
            if abs(last - previous) <= WARMUP_TOLERANCE * previous:
                return len(latencies)
        if time.monotonic() > deadline:
            return len(latencies)
