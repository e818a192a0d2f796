"""A long-running server holds what its live versions need and nothing more: after hot updates
and worker kills (with traffic between them) its file descriptors, threads, shared-memory files,
version registry and metric series are back where they were after the first update."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelmint._repository import CONFIG_FILE, ONNX_FILE, ModelRepository
from modelmint._serve import DataPlane
from modelmint._serve.executors import ProcessExecutor
from modelmint._serve.metrics import FORGOTTEN_MAX, Metrics

ROUNDS = 2
BATCH = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
HEADER = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(BATCH.shape),
                                 "parameters": {"binary_data_size": BATCH.nbytes}}]}).encode()
HEADERS = {"Inference-Header-Content-Length": str(len(HEADER)),
           "Content-Type": "application/octet-stream"}
# Reaches the version (and its failure counter) before it is refused: the wrong shape.
WRONG_SHAPE = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2], "data": [0, 0]}]}


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def counts() -> dict[str, int]:
    """What this process (the server runs in it) holds right now."""
    return {"fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task")),
            "shm": sum(name.startswith("modelmint-") for name in os.listdir("/dev/shm"))}


def settled_at_most(baseline: dict[str, int]) -> dict[str, int]:
    """Counts once the transient restart/reader threads have ended (or the last seen)."""
    deadline = time.monotonic() + 10
    while True:
        now = counts()
        if all(now[k] <= baseline[k] for k in baseline) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def served_pids(plane: DataPlane, version: int) -> list[int]:
    served = plane.lifecycle.served.get("tiny", {})
    s = served.get(version)
    if list(served) != [version] or s is None or s.executor is None:
        return []
    return s.executor.pids()


def traffic(http: httpx.Client) -> None:
    for _ in range(3):
        assert http.post("/v2/models/tiny/infer", content=HEADER + BATCH.tobytes(),
                         headers=HEADERS).status_code == 200
    assert http.post("/v2/models/tiny/infer", json=WRONG_SHAPE).status_code == 400


@pytest.fixture()
def repo(tmp_path: Path, publish: Callable[..., Path]) -> Path:
    publish(tmp_path, seed=0)
    (tmp_path / "tiny" / CONFIG_FILE).write_text(json.dumps({"instances": 1}))
    return tmp_path


def test_updates_and_kills_return_to_the_first_updates_level(
        repo: Path, start_full_server: Callable[..., Any]) -> None:
    source = repo / "tiny" / "1"
    copy = repo.parent / f"{repo.name}-source"
    shutil.copytree(source, copy)
    store = ModelRepository(repo)

    def update() -> int:
        version = store.publish("tiny", lambda tmp, _: shutil.copytree(
            copy, tmp, dirs_exist_ok=True)).version
        plane.lifecycle.reconcile("tiny")  # what the poll thread does
        wait_for(lambda: len(served_pids(plane, version)) == 1)
        return version

    with start_full_server(repo, isolation="process") as (server, plane), \
            httpx.Client(base_url=server.url, timeout=60) as http:
        traffic(http)
        version = update()
        traffic(http)
        baseline = counts()
        for _ in range(ROUNDS):
            version = update()
            traffic(http)
            [victim] = served_pids(plane, version)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=version, gone=victim: served_pids(plane, v) not in ([], [gone]))
            traffic(http)
        now = settled_at_most(baseline)
        assert all(now[k] <= baseline[k] for k in baseline), (baseline, now)
        # Only the live version is known, counted and windowed.
        assert list(plane.lifecycle.versions["tiny"]) == [version]
        text = plane.metrics.exposition().decode()
        versions = {part.split('"')[1] for part in text.split('version=')[1:]}
        assert versions <= {str(version), ""}, versions
        assert set(plane.metrics._windows) == {("tiny", str(version))}
        index = {e["version"]: e["state"] for e in http.post("/v2/repository/index").json()}
        assert index[str(version)] == "READY"
        assert set(index.values()) == {"READY", "UNLOADED"}  # older ones: still listed


def test_unloading_removes_every_series_of_the_version_for_good() -> None:
    metrics = Metrics()
    metrics.set_state("m", "1", "READY")
    metrics.observe_load("m", "1", 0.5, 0.25)
    metrics.observe_request("m", "1", True, 0.01, {"queue_s": 0.0, "compute_s": 0.01,
                                                   "batch_size": 1.0})
    metrics.observe_request("m", "1", False, 0.01, error="InvalidInput")
    metrics.set_state("m", "2", "READY")
    metrics.observe_request("m", "2", True, 0.01)
    metrics.set_state("m", "1", "unloaded")
    # A request that drained just before the unload is recorded just after it.
    metrics.observe_request("m", "1", True, 0.01, {"compute_s": 0.01})
    metrics.observe_request("m", "1", False, 0.01, error="ModelNotReady")
    text = metrics.exposition().decode()
    assert 'version="1"' not in text and 'version="2"' in text
    assert [v["version"] for v in metrics.stats("m")["versions"]] == ["2"]
    metrics.set_state("m", "1", "LOADING")  # loaded again: counted again
    metrics.observe_request("m", "1", True, 0.01)
    assert 'modelmint_inference_requests_total{model="m",version="1"} 1.0' in \
        metrics.exposition().decode()
    for version in range(10, 10 + 2 * FORGOTTEN_MAX):  # what it remembers stays bounded
        metrics.set_state("m", str(version), "unloaded")
    assert len(metrics._forgotten) == FORGOTTEN_MAX



def test_a_starting_workers_shared_memory_is_not_left_behind(repo: Path) -> None:
    """The worker removes the slots' name once it has mapped them: a server stopped (or
    killed) while a worker starts, before it could remove the name itself, leaves nothing in
    /dev/shm."""
    executor = ProcessExecutor(repo / "tiny" / "1" / ONNX_FILE, 224, "tiny")
    try:
        path = Path(executor._shm_path)
        assert path.parent == Path("/dev/shm")
        # The server never asks for the worker's answer (its thread died with it).
        wait_for(lambda: executor._started.done())
        assert not path.exists()
        assert executor.run(BATCH).result(30)["probabilities"].shape == (1, 2)  # still served
    finally:
        executor.close()


def test_thread_count_does_not_follow_the_busiest_moment(repo: Path) -> None:
    """The threads that decode requests and do the event loop's blocking work start with the
    server: a burst of concurrent HTTP and gRPC requests adds none."""
    import threading

    import tritonclient.grpc as grpcclient

    from live_server import full_server

    def server_threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if not t.name.startswith("burst"))

    with full_server(repo, grpc_port=0) as (server, _):
        before = server_threads()

        def burst() -> None:
            grpc = grpcclient.InferenceServerClient(server.grpc.address)  # type: ignore[union-attr]
            with httpx.Client(base_url=server.url) as http:
                for _ in range(10):
                    http.post("/v2/models/tiny/infer", content=HEADER + BATCH.tobytes(),
                              headers=HEADERS).raise_for_status()
                    tensor = grpcclient.InferInput("input", list(BATCH.shape), "FP32")
                    tensor.set_data_from_numpy(BATCH)
                    grpc.infer("tiny", [tensor])
            grpc.close()

        clients = [threading.Thread(target=burst, name=f"burst-{i}") for i in range(8)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        assert server_threads() == before
