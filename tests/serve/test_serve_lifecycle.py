"""Repository lifecycle: version policies, the repository API, hot updates with worker
processes, failed versions, killed workers and draining; real servers, real tritonclients."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from starlette.applications import Starlette
from tritonclient.utils import InferenceServerException

from modelmint._repository import CONFIG_FILE
from modelmint._serve import DataPlane, create_app
from modelmint._serve.lifecycle import DRAINING, FAILED, READY, UNLOADED

Serve = Callable[[Starlette], AbstractContextManager[str]]
BATCH = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


def tensor() -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", list(BATCH.shape), "FP32")
    tensor.set_data_from_numpy(BATCH)
    return tensor


def states(client: httpclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {e["version"]: (e["state"], e.get("reason", ""))
            for e in client.get_model_repository_index()}


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@contextmanager
def server(root: Path, serve_app: Serve, isolation: str = "process",
           poll: float = 0.0
           ) -> Iterator[tuple[DataPlane, httpclient.InferenceServerClient, str]]:
    plane = DataPlane(root, isolation=isolation)  # type: ignore[arg-type]
    try:
        with serve_app(create_app(plane)) as url:
            plane.start_polling(poll)
            client = httpclient.InferenceServerClient(url)
            try:
                yield plane, client, url
            finally:
                client.close()
    finally:
        plane.close()


@pytest.fixture()
def two_versions(tmp_path: Path, publish: Callable[..., Path]) -> Path:
    publish(tmp_path, seed=1)
    publish(tmp_path, seed=0)
    return tmp_path


def test_repository_api_and_policy_404(two_versions: Path, serve_app: Serve) -> None:
    with server(two_versions, serve_app) as (_, client, _):
        assert "model_repository" in client.get_server_metadata()["extensions"]
        assert states(client) == {"1": (UNLOADED, "not selected by the version policy "
                                               "(latest 1)"), "2": (READY, "")}
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
        with pytest.raises(InferenceServerException, match=r"policy.*latest 1") as info:
            client.get_model_metadata("tiny", "1")
        assert info.value.status() == "404"
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "2"

        client.unload_model("tiny")
        assert states(client)["2"][0] == UNLOADED and not client.is_model_ready("tiny")
        with pytest.raises(InferenceServerException) as info:
            client.infer("tiny", [tensor()])
        assert info.value.status() == "503"
        client.load_model("tiny")
        assert client.is_model_ready("tiny")
        assert client.get_model_repository_index()  # tritonclient's own body: {}
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope")
        assert info.value.status() == "404"


def test_policies_latest_2_and_specific(two_versions: Path, serve_app: Serve) -> None:
    (two_versions / "tiny" / CONFIG_FILE).write_text(json.dumps(
        {"version_policy": {"latest": 2}}))
    with server(two_versions, serve_app, isolation="thread") as (_, client, _):
        assert client.get_model_metadata("tiny")["versions"] == ["1", "2"]
        for version in ("1", "2"):
            response = client.infer("tiny", [tensor()], model_version=version)
            assert response.get_response()["model_version"] == version
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "2"

        (two_versions / "tiny" / CONFIG_FILE).write_text(json.dumps(
            {"version_policy": {"specific": [1]}}))
        client.load_model("tiny")  # explicit mode: the API applies the new policy
        assert client.get_model_metadata("tiny")["versions"] == ["1"]
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "1"
        with pytest.raises(InferenceServerException, match=r"specific \[1\]") as info:
            client.infer("tiny", [tensor()], model_version="2")
        assert info.value.status() == "404"


def test_polling_hot_update_has_no_failed_requests(two_versions: Path, serve_app: Serve,
                                                   publish: Callable[..., Path]) -> None:
    with server(two_versions, serve_app, poll=0.2) as (plane, client, url):
        assert plane.models["tiny"].version == 2
        [old_pid] = plane.lifecycle.served["tiny"][2].executor.pids()  # type: ignore[union-attr]
        seen: dict[str, int] = {}
        errors: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            own = httpclient.InferenceServerClient(url)
            for _ in range(2000):  # bounded, whatever happens to the switch
                if stop.is_set():
                    break
                try:
                    version = own.infer("tiny", [tensor()]).get_response()["model_version"]
                    seen[version] = seen.get(version, 0) + 1
                except Exception as exc:
                    errors.append(repr(exc))
                time.sleep(0.005)  # leave idle CPU: the new worker loads at SCHED_IDLE
            own.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.3)
            publish(two_versions, seed=2)
            wait_for(lambda: states(client).get("2", ("",))[0] == UNLOADED)
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join(30)
        assert errors == []
        assert seen.get("2", 0) > 0 and seen.get("3", 0) > 0, seen
        assert plane.models["tiny"].version == 3
        with pytest.raises(ProcessLookupError):  # the old worker drained and exited
            os.kill(old_pid, 0)


def test_failed_versions_keep_the_old_one_serving(two_versions: Path, serve_app: Serve,
                                                  publish: Callable[..., Path]) -> None:
    with server(two_versions, serve_app) as (_, client, _):
        (publish(two_versions, seed=3) / "model.onnx").write_bytes(b"\x00garbage" * 50)
        with pytest.raises(InferenceServerException, match="failed to load") as info:
            client.load_model("tiny")
        assert info.value.status() == "400"
        state, reason = states(client)["3"]
        assert state == FAILED and "onnxruntime cannot load it" in reason
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "2"
        with pytest.raises(InferenceServerException, match="failed to load") as info:
            client.is_model_ready("tiny", "3") or client.get_model_metadata("tiny", "3")
        assert info.value.status() == "503"

        warm = publish(two_versions, seed=4) / "warmup" / "request-000.json"
        request = json.loads(warm.read_text())
        request["inputs"][0]["data"] = ["bm90IGFuIGltYWdl"]  # base64 of "not an image"
        warm.write_text(json.dumps(request))
        with pytest.raises(InferenceServerException, match="warmup request failed"):
            client.load_model("tiny")
        assert states(client)["4"][0] == FAILED
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "2"


def test_killed_worker_restarts_without_a_load_call(two_versions: Path,
                                                   serve_app: Serve) -> None:
    with server(two_versions, serve_app) as (plane, client, _):
        pool = plane.lifecycle.served["tiny"][2].executor
        assert pool is not None
        [pid] = pool.pids()
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()  # workers stay lean
        os.kill(pid, signal.SIGKILL)
        # Held while it restarts, then answered by the new worker: no error, no load call.
        assert client.infer("tiny", [tensor()]).get_response()["model_version"] == "2"
        assert pool.crashes == 1 and pool.pids() and pool.pids() != [pid]
        assert states(client)["2"] == (READY, "")


def test_draining_waits_for_in_flight_requests(two_versions: Path,
                                               publish: Callable[..., Path]) -> None:
    plane = DataPlane(two_versions, isolation="thread")
    try:
        plane.load()
        old = plane._acquire("tiny", None)  # a request in flight on version 2
        publish(two_versions, seed=2)
        loader = threading.Thread(target=plane.repository_load, args=("tiny",))
        loader.start()
        wait_for(lambda: old.state == DRAINING)
        assert plane.models["tiny"].version == 3  # new requests already go to version 3
        time.sleep(0.2)
        assert old.state == DRAINING and old.executor is not None  # still draining
        old.inflight -= 1  # the request finishes
        loader.join(10)
        assert old.state == UNLOADED and old.executor is None
    finally:
        plane.close()


def test_dynamic_batching_and_timings(two_versions: Path) -> None:
    import asyncio

    from modelmint._serve import InferInput, InferRequest

    (two_versions / "tiny" / CONFIG_FILE).write_text(json.dumps(
        {"dynamic_batching": {"max_batch_size": 4}}))
    plane = DataPlane(two_versions, isolation="thread")
    try:
        plane.load()
        request = InferRequest(inputs=[InferInput("input", "FP32", list(BATCH.shape), BATCH)])

        async def burst() -> list[dict[str, float]]:
            results = await asyncio.gather(*(plane.infer("tiny", None, request)
                                             for _ in range(6)))
            return [r.timings for r in results]

        timings = asyncio.run(burst())
        assert all(set(t) >= {"queue_s", "compute_s", "batch_size"} for t in timings)
        assert max(t["batch_size"] for t in timings) > 1  # the burst was batched
        assert plane.lifecycle.served["tiny"][2].batcher is not None
    finally:
        plane.close()


def test_request_timeout_without_batching(two_versions: Path) -> None:
    import asyncio

    from modelmint._serve import InferInput, InferRequest
    from modelmint.errors import DeadlineExceeded

    plane = DataPlane(two_versions, isolation="thread")
    try:
        plane.load()
        inputs = [InferInput("input", "FP32", list(BATCH.shape), BATCH)]
        with pytest.raises(DeadlineExceeded, match=r"timeout of 0\.001 ms"):
            asyncio.run(plane.infer("tiny", None, InferRequest(inputs=inputs,
                                                               parameters={"timeout": 1})))
        ok = asyncio.run(plane.infer("tiny", None, InferRequest(
            inputs=inputs, parameters={"timeout": 60_000_000})))
        assert ok.timings["batch_size"] == 1.0 and ok.timings["queue_s"] == 0.0
    finally:
        plane.close()
