"""Warm-up: a version's recorded requests, replayed on an executor before it takes traffic,
so that lazy initialisation (ONNX Runtime allocates and tunes on its first runs) never lands
on live requests. Every instance of a version is warmed, at load and at each restart."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import MintError, RepositoryError

if TYPE_CHECKING:
    from .executors import Executor
    from .model import LoadedModel

WARMUP_CAP_S = 10.0
WARMUP_RUN_TIMEOUT_S = 120.0  # one run, even at idle priority on a saturated CPU
# Measured on MobileNetV2: the first run takes ~2x, the second ~1.4x, the third is steady.
WARMUP_WINDOW = 2
WARMUP_TOLERANCE = 0.10


def warmup(model: LoadedModel, executor: Executor, cap_s: float = WARMUP_CAP_S) -> int:
    """Replay the version's warmup requests until they stop getting faster; returns the run
    count.

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
            # The fastest run of each window: a worker warms at idle priority beside live
            # requests, whose work only ever makes a run slower (medians of 5 needed 10-20
            # runs, ~120 ms of CPU, under load); lazy initialisation makes the first ones
            # slower. Warm once the fastest runs stop getting faster.
            last = min(latencies[-WARMUP_WINDOW:])
            previous = min(latencies[-2 * WARMUP_WINDOW:-WARMUP_WINDOW])
            if last >= (1 - WARMUP_TOLERANCE) * previous:
                return len(latencies)
        if time.monotonic() > deadline:
            return len(latencies)
