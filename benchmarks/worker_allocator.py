"""Allocator options for the serving worker process (ONNX Runtime's CPU arena, jemalloc).

For each of ONNX Runtime's CPU arena on/off x glibc malloc / jemalloc (``LD_PRELOAD`` of
Debian's ``libjemalloc2``), start one worker (:class:`modelmint._serve.executors.ProcessExecutor`)
on MobileNetV2 (random weights, 2 classes), time its start, then run ``--requests`` sequential
FP32 [1, 3, 224, 224] batches while a second worker for the same model is started and stopped
in the background every second (the update situation: two sessions allocating at once); report
p50/p99/max latency and the worker's RSS. Configurations alternate over ``--rounds``.

    python benchmarks/worker_allocator.py [--requests 400] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hot_update import export
from modelmint._serve.executors import JEMALLOC, ProcessExecutor

CONFIGS = [(arena, jemalloc) for arena in (False, True) for jemalloc in (False, True)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(onnx: Path, arena: bool, jemalloc: bool, requests: int) -> dict[str, float]:
    started = time.perf_counter()
    worker = ProcessExecutor(onnx, 224, "bench", arena=arena, jemalloc=jemalloc)
    worker.io()
    worker.promote()
    start_s = time.perf_counter() - started
    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(20):
        worker.run(batch).result()
    stop = threading.Event()

    def churn() -> None:  # another version loading and unloading beside it
        while not stop.is_set():
            other = ProcessExecutor(onnx, 224, "churn", arena=arena, jemalloc=jemalloc)
            other.io()
            other.close()
            stop.wait(1.0)

    churner = threading.Thread(target=churn)
    churner.start()
    latencies = []
    for _ in range(requests):
        t = time.perf_counter()
        worker.run(batch).result()
        latencies.append((time.perf_counter() - t) * 1e3)
    stop.set()
    churner.join()
    rss = rss_mb(worker.pid)
    worker.close()
    values = np.array(latencies)
    return {"start_s": start_s, "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max()),
            "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not JEMALLOC.is_file():
        print(f"{JEMALLOC} is missing (apt-get install libjemalloc2): jemalloc rows are glibc")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export(Path(tmp)) / "model.onnx"
        rows: dict[str, list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for arena, jemalloc in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                malloc = "jemalloc" if jemalloc else "glibc"
                name = f"arena={'on' if arena else 'off'} malloc={malloc}"
                rows.setdefault(name, []).append(measure(onnx, arena, jemalloc, args.requests))
    result: dict[str, Any] = {name: {k: float(np.median([m[k] for m in ms])) for k in ms[0]}
                              for name, ms in rows.items()}
    for name, m in result.items():
        print(f"{name:32} " + " ".join(f"{k}={v:.1f}" for k, v in m.items()))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
