"""Worker supervision through the real server (HTTP and gRPC, worker processes), under
closed-loop load: ``kill -9`` of a worker restarts it on its own, the requests in flight on it
run again, readiness tells the truth, and ``instances`` spreads requests over several workers.
The failed requests per kill are measured and printed (``pytest -s`` shows them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelmint._repository import CONFIG_FILE, ONNX_FILE
from modelmint._repository.config import BatchingConfig
from modelmint._serve import DataPlane, forkserver, instances
from modelmint._serve.batching import DynamicBatcher
from modelmint._serve.instances import InstancePool, backoff_s
from modelmint._serve.lifecycle import FAILED, READY

FullServer = Callable[..., AbstractContextManager[tuple[Any, DataPlane]]]
BATCH = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
HEADER = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(BATCH.shape),
                                 "parameters": {"binary_data_size": BATCH.nbytes}}]}).encode()
BODY = HEADER + BATCH.tobytes()
HEADERS = {"Inference-Header-Content-Length": str(len(HEADER)),
           "Content-Type": "application/octet-stream"}
RECOVERY_S = 10.0  # "ready again within a few seconds"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds until ``condition`` held (fails the test after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Outcome:
    client: int
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    retry_after: str | None


class Load:
    """Closed-loop clients: each sends its next request once the last one is answered; a
    bounded number of requests, so it stops by itself whatever happens to the server."""

    def __init__(self, url: str, clients: int = 3, pause_s: float = 0.01,
                 limit: int = 4000) -> None:
        self.url, self.pause_s, self.limit = url, pause_s, limit
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.ok() >= 10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self, client: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set() and len(self.outcomes) < self.limit:
                started = time.monotonic()
                try:
                    reply = http.post("/v2/models/tiny/infer", content=BODY, headers=HEADERS)
                    status, retry_after = reply.status_code, reply.headers.get("retry-after")
                except httpx.HTTPError:
                    status, retry_after = 0, None
                self.outcomes.append(Outcome(client, started, time.monotonic(), status,
                                             retry_after))
                time.sleep(self.pause_s)  # leaves idle CPU: restarts beside a live worker idle

    def ok(self) -> int:
        return sum(o.status == 200 for o in list(self.outcomes))

    def settled(self, moment: float) -> bool:
        """Every client has had an answer since ``moment`` (so none still waits from then)."""
        return len({o.client for o in list(self.outcomes) if o.ended > moment}) == len(
            self._threads)

    def in_flight_at(self, moment: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.started < moment < o.ended]

    def failed_after(self, moment: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.status != 200 and o.ended > moment]


def kill(pid: int, freeze_s: float = 0.0) -> float:
    """``kill -9`` the worker; ``freeze_s`` stops it that long first, so that requests are
    surely in flight on it when it dies. Returns when it was killed."""
    if freeze_s:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(freeze_s)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return killed


@contextmanager
def supervised(root: Path, config: dict[str, Any], start_full_server: FullServer
               ) -> Iterator[tuple[str, grpcclient.InferenceServerClient, InstancePool]]:
    (root / "tiny" / CONFIG_FILE).write_text(json.dumps(config))
    with start_full_server(root, isolation="process") as (server, plane):
        pool = plane.lifecycle.served["tiny"][1].executor
        assert pool is not None and len(pool.pids()) == config["instances"]
        grpc = grpcclient.InferenceServerClient(server.grpc.address)
        try:
            yield server.url, grpc, pool
        finally:
            grpc.close()


def replaced(pool: InstancePool, pid: int) -> bool:
    """Every instance is live again, ``pid`` no longer among them."""
    return len(pool.pids()) == pool.size and pid not in pool.pids()


def readiness(url: str, grpc: grpcclient.InferenceServerClient) -> list[bool]:
    """Model and server readiness, over HTTP and gRPC."""
    return [httpx.get(f"{url}/v2/models/tiny/ready").status_code == 200,
            httpx.get(f"{url}/v2/health/ready").status_code == 200,
            grpc.is_model_ready("tiny"), grpc.is_server_ready()]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, publish: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("published")
    publish(root, seed=0)
    return root


@pytest.fixture()
def repo(tmp_path: Path, published: Path) -> Path:
    """A repository of its own for each test (they write config.json, move files)."""
    shutil.copytree(published, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_two_instances_lose_no_request_to_kills(repo: Path, start_full_server: FullServer
                                                ) -> None:
    config = {"instances": 2, "dynamic_batching": {"max_batch_size": 4}}  # batching on top
    # More clients than a batch holds: the batcher may put every waiting request into the batch
    # the frozen worker holds, and then no client is left to be served meanwhile.
    with supervised(repo, config, start_full_server) as (url, grpc, pool), \
            Load(url, clients=6) as load:
        for index, freeze_s in ((0, 0.0), (1, 0.3)):  # each instance once
            victim = pool.pids()[index]
            before = load.ok()
            killed = kill(victim, freeze_s)
            served_meanwhile = load.ok() - before
            assert all(readiness(url, grpc))  # one instance left is still a ready version
            restarted = wait_for(partial(replaced, pool, victim), 25)
            wait_for(partial(load.settled, killed))
            in_flight = load.in_flight_at(killed)
            print(f"\ninstances=2 kill {index + 1}: {len(in_flight)} request(s) in flight, "
                  f"{len(load.failed_after(killed))} failed, restarted in {restarted:.2f} s")
            if freeze_s:  # the frozen worker held requests while the other one answered
                assert in_flight and served_meanwhile > 0
        time.sleep(0.2)
    assert load.failed_after(0) == []
    assert pool.crashes == 2 and load.ok() > 40


def test_one_instance_recovers_alone_and_readiness_follows(
        repo: Path, start_full_server: FullServer) -> None:
    with supervised(repo, {"instances": 1}, start_full_server) as (url, grpc, pool), \
            Load(url) as load:
        for kill_number, freeze_s in enumerate((0.0, 0.3, 0.3), 1):
            stateful = kill_number == 3  # a version whose requests may not run twice
            pool.stateless = not stateful
            [victim] = pool.pids()
            # A replacement is forked in a few ms: with the fork server stopped, the time
            # without a worker lasts until it is let go, long enough to see readiness false.
            fork_server = forkserver.shared_pid()
            assert fork_server is not None
            os.kill(fork_server, signal.SIGSTOP)
            try:
                killed = kill(victim, freeze_s)
                wait_for(lambda: not any(readiness(url, grpc)), 5)  # false at once...
            finally:
                os.kill(fork_server, signal.SIGCONT)
            wait_for(lambda: all(readiness(url, grpc)), RECOVERY_S)  # ...then true
            recovered = time.monotonic() - killed
            wait_for(partial(load.settled, killed))
            failed = load.failed_after(killed)
            in_flight = load.in_flight_at(killed)
            print(f"\ninstances=1 kill {kill_number}{' (stateful)' if stateful else ''}: "
                  f"{len(in_flight)} request(s) in flight, {len(failed)} failed, ready again "
                  f"{recovered:.2f} s after the kill (its fork server held until readiness "
                  "was seen false), no load call")
            # Only requests in flight at the kill that could not run again fail, with a 503
            # that says when to come back.
            assert len(failed) <= len(in_flight)
            assert all(o.status == 503 and int(o.retry_after or 0) >= 1 for o in failed)
            if stateful:
                assert failed and all(o.started < killed for o in failed)
            else:
                assert failed == []
            pool.stateless = True
            time.sleep(0.3)  # served again before the next kill
            assert load.failed_after(time.monotonic() - 0.25) == []
    assert pool.crashes == 3


def test_a_version_that_keeps_failing_to_restart_ends_failed(
        repo: Path, start_full_server: FullServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0, 0.25, 0.5, 1, 2, 4, 8]
    monkeypatch.setattr(instances, "MAX_FAILURES", 2)  # gives up sooner: a shorter test
    onnx = repo / "tiny" / "1" / ONNX_FILE
    hidden = onnx.with_name("elsewhere.onnx")
    # The explicit load below answers once the version is loaded and warm: on a busy machine
    # (the suite beside mypy) that took longer than httpx's default 5 s.
    with supervised(repo, {"instances": 1}, start_full_server) as (url, grpc, pool), \
            httpx.Client(base_url=url, timeout=60) as http:
        onnx.rename(hidden)  # every restart from now on fails
        kill(pool.pids()[0])

        def state() -> dict[str, str]:
            [entry] = http.post("/v2/repository/index").json()
            return dict(entry)

        took = wait_for(lambda: state()["state"] == FAILED, 25)
        print(f"\nFAILED {took:.1f} s after the kill: {state()['reason']}")
        assert "keeps failing (2 failed restarts in a row" in state()["reason"]
        ready = http.get("/v2/models/tiny/versions/1/ready")
        assert ready.status_code == 400 and "keeps failing" in ready.json()["error"]
        assert str(repo) not in ready.text and not grpc.is_server_ready()
        assert http.get("/v2/health/ready").status_code == 400
        assert http.get("/v2/health/live").status_code == 200  # the process itself is fine
        answer = http.post("/v2/models/tiny/infer", content=BODY, headers=HEADERS)
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1

        hidden.rename(onnx)  # fixed: an explicit load serves it again
        assert http.post("/v2/repository/models/tiny/load").status_code == 200
        assert state()["state"] == READY and all(readiness(url, grpc))
        assert http.post("/v2/models/tiny/infer", content=BODY,
                         headers=HEADERS).status_code == 200


@pytest.mark.anyio
async def test_the_batcher_runs_one_execution_per_instance_at_once() -> None:
    sizes: list[int] = []
    gate = asyncio.Event()

    async def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        sizes.append(len(batch))
        await gate.wait()
        return {"y": batch * 2}

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4), "m", concurrency=2)
    tasks = []
    for request_id, executing in ((0, [1]), (1, [1, 1])):  # the second instance was idle
        tasks.append(asyncio.create_task(batcher.submit(np.full((1, 1), float(request_id)))))
        while sizes != executing:
            await asyncio.sleep(0.001)
    tasks += [asyncio.create_task(batcher.submit(np.full((1, 1), float(i)))) for i in (2, 3)]
    while batcher.queue_depth != 2:  # both instances busy: these two wait, together
        await asyncio.sleep(0.001)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert [float(outputs["y"][0, 0]) for outputs, _ in results] == [0.0, 2.0, 4.0, 6.0]
    assert sorted(sizes) == [1, 1, 2]
