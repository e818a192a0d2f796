"""``mint serve --ray``: the V2 server as Ray Serve replicas on a local three-node cluster
(a head and two workers on loopback), one ``mint serve --ray`` shared by every test, run in
order: inference, ``mint predict``, a rolling update under load, a broken version rolled
back, a killed replica replaced. Skipped when Ray Serve is not installed, or with
``MINT_TEST_RAY=0``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed")

import ray
from ray import serve

from modelmint._serve.ray_serve import APP_NAME, NAMESPACE, coordinator_name
from ray_cluster import (
    INPUT,
    MODEL,
    CliServer,
    RequestLoop,
    publish,
    weights,
)

REPLICAS = 2
pytestmark = pytest.mark.timeout(180)


class Deployment:
    def __init__(self, server: CliServer, root: Path, token: str) -> None:
        self.server, self.root, self.token = server, root, token
        self.coordinator = ray.get_actor(coordinator_name(APP_NAME), namespace=NAMESPACE)

    @property
    def url(self) -> str:
        return self.server.url

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = ray.get(self.coordinator.status.remote())
        return result

    def live(self) -> dict[str, dict[str, Any]]:
        return {rid: r for rid, r in self.status()["replicas"].items() if r["live"]}

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(status := self.status()):
            assert time.monotonic() < deadline, f"timed out; coordinator status: {status}"
            time.sleep(0.2)


def running_replicas() -> int:
    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


class ReplicaCount:
    """Samples Ray Serve's count of RUNNING replicas on a thread (the lowest seen)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(running_replicas())

    def __enter__(self) -> ReplicaCount:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory, ray_cluster: Any
               ) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("ray-serve")
    root = work / "repo"
    assert publish(root) == 1
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token_file = work / "token"
    server = CliServer.start(
        [str(root), "--ray", ray_cluster.address, "--replicas", str(REPLICAS),
         "--http-port", str(port), "--grpc-port", "0", "--poll", "0.5",
         "--token-file", str(token_file)],
        f"http://127.0.0.1:{port}", work / "serve.log")
    try:
        yield Deployment(server, root, token_file.read_text().strip())
    finally:
        assert server.stop() == 0, (work / "serve.log").read_text()[-3000:]
        assert APP_NAME not in serve.status().applications  # deleted on SIGTERM


def test_tritonclient_through_ray_serve(deployment: Deployment) -> None:
    import tritonclient.http as httpclient

    ready = f"serving 1 model(s) on {deployment.url} and grpc://127.0.0.1:"
    assert deployment.server.lines[0].startswith(ready), deployment.server.lines
    assert "through Ray Serve (2 replica(s))" in deployment.server.lines[0]
    client = httpclient.InferenceServerClient(deployment.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_model_metadata(MODEL)["versions"] == ["1"]
    tensor = httpclient.InferInput("input", list(INPUT.shape), "FP32")
    for binary in (True, False):
        tensor.set_data_from_numpy(INPUT, binary_data=binary)
        for _ in range(4):
            result = client.infer(MODEL, [tensor])
            assert result.get_response()["model_version"] == "1"
            np.testing.assert_allclose(result.as_numpy("prediction"), INPUT @ weights(1),
                                       rtol=1e-5)
    live = deployment.live()
    assert len(live) == REPLICAS and running_replicas() == REPLICAS
    assert all(r["models"][MODEL]["routed"] == [1] for r in live.values())


def test_tritonclient_grpc_through_ray_serve(deployment: Deployment) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    line = deployment.server.lines[0]
    address = line[line.index("grpc://") + len("grpc://"):].split()[0]
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL).versions == ["1"]
    tensor = grpcclient.InferInput("input", list(INPUT.shape), "FP32")
    tensor.set_data_from_numpy(INPUT)
    for _ in range(4):
        result = client.infer(MODEL, [tensor])
        assert result.get_response().model_version == "1"
        np.testing.assert_allclose(result.as_numpy("prediction"), INPUT @ weights(1), rtol=1e-5)
    # The adapter's statuses come through Ray Serve unchanged.
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [tensor])
    assert unknown.value.status() == "StatusCode.NOT_FOUND", unknown.value
    with pytest.raises(InferenceServerException) as anonymous:
        client.get_model_repository_index()
    assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED", anonymous.value
    index = client.get_model_repository_index(
        headers={"authorization": f"Bearer {deployment.token}"})
    assert [m.name for m in index.models] == [MODEL]
    # Bytes that are no ModelInferRequest: refused, and the replicas go on serving.
    import grpc

    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xff\xff\xff")
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage.value
    assert "not a valid inference.ModelInferRequest" in str(garbage.value.details())
    assert client.infer(MODEL, [tensor]).get_response().model_version == "1"


def test_requests_enter_through_ray_serves_haproxy(deployment: Deployment) -> None:
    # Ray Serve's high-throughput ingress: HAProxy listens on the HTTP port and hands requests
    # to replicas that answer HTTP themselves, not to the Python proxy actor.
    import psutil

    port = int(deployment.url.rsplit(":", 1)[1])
    listeners = {c.pid for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    assert listeners and {psutil.Process(pid).name() for pid in listeners if pid} == {"haproxy"}


def test_token_guards_the_repository_api_but_not_health(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        assert http.get("/v2/health/ready").status_code == 200
        refused = http.post("/v2/repository/index")
        assert refused.status_code == 401 and "access token" in refused.json()["error"]
        index = http.post("/v2/repository/index",
                          headers={"Authorization": f"Bearer {deployment.token}"})
        assert index.status_code == 200
        assert {(e["version"], e["state"]) for e in index.json()} == {("1", "READY")}
        unload = http.post(f"/v2/repository/models/{MODEL}/unload",
                           headers={"Authorization": f"Bearer {deployment.token}"})
        assert unload.status_code == 409 and "every replica" in unload.json()["error"]


def test_mint_predict_url(deployment: Deployment, tmp_path: Path) -> None:
    np.save(tmp_path / "item.npy", INPUT[0])
    proc = subprocess.run(
        [sys.executable, "-m", "modelmint.cli", "predict", str(tmp_path / "item.npy"),
         "--model", MODEL, "--url", deployment.url, "--json"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    np.testing.assert_allclose(row["outputs"]["prediction"], INPUT[0] @ weights(1), rtol=1e-5)


def test_new_version_rolls_out_without_a_failed_request(deployment: Deployment) -> None:
    with ReplicaCount() as count, RequestLoop(deployment.url) as load:
        time.sleep(0.5)
        assert publish(deployment.root) == 2
        deployment.wait_for(lambda s: s["committed"].get(MODEL) == [2] and all(
            r["models"].get(MODEL, {}).get("routed") == [2]
            for r in s["replicas"].values() if r["live"]))
        time.sleep(0.5)
    assert not load.failed, load.failed[:3]
    assert load.versions() == {1, 2}
    switched = next(i for i, a in enumerate(load.answers) if a.version == 2)
    assert len(load.answers) > 20 and switched > 0
    # Version 2 answered only once every replica had it warm: not while one was loading it.
    # (time.monotonic() is the machine's clock: the coordinator's and ours compare.)
    assert load.answers[switched].at > deployment.status()["committed_at"][MODEL]
    assert count.samples and min(count.samples) >= REPLICAS, count.samples
    assert all(r["models"][MODEL]["ready"] == [2] for r in deployment.live().values())


def test_broken_version_is_rolled_back_and_never_answers(deployment: Deployment) -> None:
    with ReplicaCount() as count, RequestLoop(deployment.url) as load:
        time.sleep(0.5)
        assert publish(deployment.root, corrupt=True) == 3
        deployment.wait_for(lambda s: 3 in s["failed"].get(MODEL, {}) and not s["rollouts"])
        # Every replica unloaded what it staged, and still routes version 2.
        deployment.wait_for(lambda s: all(
            r["models"].get(MODEL, {}).get("ready") == [2]
            and not r["models"][MODEL]["failed"] for r in s["replicas"].values() if r["live"]))
        time.sleep(1.0)  # the next polls must not try version 3 again
    status = deployment.status()
    assert status["committed"][MODEL] == [2] and not status["rollouts"]
    assert list(status["failed"][MODEL]) == [3]
    assert not load.failed, load.failed[:3]
    assert load.versions() == {2}  # version 3 never answered
    assert min(count.samples) >= REPLICAS
    index = httpx.post(f"{deployment.url}/v2/repository/index", timeout=30,
                       headers={"Authorization": f"Bearer {deployment.token}"}).json()
    states = {e["version"]: e for e in index}
    assert states["2"]["state"] == "READY"
    assert states["3"]["state"] == "FAILED" and "rolled back" in states["3"]["reason"]


def test_killed_replica_is_replaced(deployment: Deployment) -> None:
    before = deployment.live()
    victim_id, victim = sorted(before.items())[0]
    # A request in flight on the killed replica fails (Ray Serve's proxy answers 500), and so
    # may one routed there before the proxy hears of its death: the client retries those.
    with RequestLoop(deployment.url, attempts=5) as load:
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        deployment.wait_for(lambda s: victim_id not in {
            rid for rid, r in s["replicas"].items() if r["live"]}, timeout_s=30)
        deployment.wait_for(lambda s: len([
            r for r in s["replicas"].values()
            if r["live"] and r["models"].get(MODEL, {}).get("routed") == [2]]) == REPLICAS,
            timeout_s=90)
        deadline = time.monotonic() + 60
        while running_replicas() < REPLICAS:
            assert time.monotonic() < deadline, serve.status()
            time.sleep(0.2)
        time.sleep(0.5)
    after = deployment.live()
    assert len(after) == REPLICAS and victim_id not in after
    assert not load.failed, load.failed[:3]
    assert load.versions() == {2}
    assert load.first_try_failures <= 3, load.first_try_failures
    assert sum(a.attempts > 1 for a in load.answers) == load.first_try_failures
