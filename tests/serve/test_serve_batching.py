"""Dynamic batching: zero added latency when idle, batches under bursts, outputs back to the right
request, bounded queue, timeouts, failures, close and cancellation.

The "model" is real NumPy code (a fixed function of each row) with three outputs of different
dtypes and trailing shapes, as a detector's, so a mix-up in how outputs are split back per
request shows as a wrong value. Requests are rows ``[request id, row index]``.
Ordering-sensitive tests hold the first execution at a gate (an asyncio.Event) while the queue
fills, so they do not depend on timing; the few timing checks have margins of seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from modelmint import errors
from modelmint._repository.config import BatchingConfig
from modelmint._serve import create_app
from modelmint._serve.batching import DynamicBatcher

pytestmark = pytest.mark.anyio  # async tests run on asyncio (anyio's default backend)


def rows(request_id: int, n: int) -> np.ndarray:
    return np.array([[request_id, i] for i in range(n)], dtype=np.float64)


def expected(batch: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": np.stack([batch[:, 0] * 2 + 1, batch[:, 1] - 3], axis=1),  # [N, 2]
            "id": batch[:, 0].astype(np.int32),  # [N]
            "boxes": np.repeat(batch[:, None, :] * 10, 3, axis=1).astype(np.float32)}  # [N, 3, 2]


class Model:
    """An async run() over a NumPy function; records each execution's batch size. A closed
    ``gate`` holds executions (before computing) until the test opens it."""

    def __init__(self, delay_s: float = 0.0, gate: bool = False,
                 fail_id: int | None = None) -> None:
        self.sizes: list[int] = []
        self.delay_s, self.fail_id = delay_s, fail_id
        self.gate = asyncio.Event()
        if not gate:
            self.gate.set()

    async def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.sizes.append(len(batch))
        await self.gate.wait()
        if self.fail_id is not None and self.fail_id in batch[:, 0]:
            raise ValueError(f"row of request {self.fail_id} is poison")
        if self.delay_s:  # a slow execution off the event loop, like the real executor
            await asyncio.to_thread(time.sleep, self.delay_s)
        return expected(batch)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def held(batcher: DynamicBatcher, model: Model) -> asyncio.Task[Any]:
    """Start a 1-row request (id 0) that sits in execution until ``model.gate`` opens."""
    task = asyncio.create_task(batcher.submit(rows(0, 1)))
    await until(lambda: model.sizes == [1])
    return task


async def queue(batcher: DynamicBatcher, sizes: list[int]) -> list[asyncio.Task[Any]]:
    """Queue requests (ids 1, 2, ...) behind a held execution, in this order."""
    tasks = []
    for i, n in enumerate(sizes):
        tasks.append(asyncio.create_task(batcher.submit(rows(i + 1, n))))
        await until(lambda: batcher.queue_depth == len(tasks))
    return tasks


def check(result: Any, request_id: int, n: int) -> dict[str, float]:
    outputs, timings = result
    want = expected(rows(request_id, n))
    assert sorted(outputs) == sorted(want)
    for name, value in want.items():
        assert outputs[name].dtype == value.dtype
        np.testing.assert_array_equal(outputs[name], value)
    assert set(timings) == {"queue_s", "compute_s", "batch_size"}
    return dict(timings)


# --- latency and batch formation ---------------------------------------------------------------

async def test_lone_request_runs_at_once_despite_a_long_queue_delay() -> None:
    model = Model()
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=5_000_000,
                            preferred_batch_sizes=(4, 8))
    batcher = DynamicBatcher(model, config, "m")
    for request_id in (1, 2):  # the second arrives at an idle model again
        started = time.monotonic()
        timings = check(await batcher.submit(rows(request_id, 1)), request_id, 1)
        assert time.monotonic() - started < 1.0  # the delay is 5 s
        assert timings["queue_s"] < 0.5 and timings["batch_size"] == 1
    assert model.sizes == [1, 1]


async def test_a_burst_batches_up_to_max_batch_size() -> None:
    model = Model(delay_s=0.02)
    batcher = DynamicBatcher(model, BatchingConfig(max_batch_size=4), "m")
    results = await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(20)))
    for i, result in enumerate(results):
        assert check(result, i, 1)["batch_size"] <= 4
    assert sum(model.sizes) == 20 and 1 < max(model.sizes) <= 4


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_outputs_go_back_to_the_right_requests(data: st.DataObject) -> None:
    max_batch = data.draw(st.integers(1, 6), label="max_batch_size")
    preferred = data.draw(st.sets(st.integers(1, max_batch), max_size=3), label="preferred")
    sizes = data.draw(st.lists(st.integers(1, 13), min_size=1, max_size=12), label="sizes")
    pauses = data.draw(st.lists(st.integers(0, 2), min_size=len(sizes), max_size=len(sizes)),
                       label="pauses")

    async def scenario() -> None:
        model = Model()
        config = BatchingConfig(max_batch_size=max_batch,
                                preferred_batch_sizes=tuple(sorted(preferred)))
        batcher = DynamicBatcher(model, config, "m")
        tasks = []
        for i, (n, pause) in enumerate(zip(sizes, pauses, strict=True)):
            tasks.append(asyncio.create_task(batcher.submit(rows(i, n))))
            for _ in range(pause):  # let some executions start between arrivals
                await asyncio.sleep(0)
        for i, n in enumerate(sizes):
            assert check(await tasks[i], i, n)["batch_size"] <= max_batch
        assert all(1 <= size <= max_batch for size in model.sizes)
        assert sum(model.sizes) == sum(sizes) and batcher.queue_depth == 0

    asyncio.run(scenario())


async def test_a_request_above_max_batch_size_is_split_not_rejected() -> None:
    model = Model(gate=True)
    batcher = DynamicBatcher(model, BatchingConfig(max_batch_size=4), "m")
    blocker = await held(batcher, model)
    small, large = await queue(batcher, [3, 10])
    model.gate.set()
    check(await blocker, 0, 1)
    check(await small, 1, 3)
    assert check(await large, 2, 10)["batch_size"] == 4
    # The large request tops up the small one's batch, then continues in its own.
    assert model.sizes == [1, 4, 4, 4, 1]


@pytest.mark.parametrize(("preferred", "queued", "executions"), [
    ((), [1] * 6, [1, 6]),
    ((4,), [1] * 6, [1, 4, 2]),
    ((2, 4), [1] * 7, [1, 4, 2, 1]),  # preferred sizes win over a larger batch
    ((2, 4), [3, 3], [1, 6]),  # no FIFO prefix has a preferred size: the longest that fits
    ((), [5, 4], [1, 5, 4]),  # strict FIFO: 4 rows do not fit after 5 and nothing overtakes
])
async def test_batches_form_from_the_queue_in_order(
        preferred: tuple[int, ...], queued: list[int], executions: list[int]) -> None:
    model = Model(gate=True)
    config = BatchingConfig(max_batch_size=8, preferred_batch_sizes=preferred)
    batcher = DynamicBatcher(model, config, "m")
    blocker = await held(batcher, model)
    tasks = await queue(batcher, queued)
    model.gate.set()
    check(await blocker, 0, 1)
    for i, (task, n) in enumerate(zip(tasks, queued, strict=True)):
        check(await task, i + 1, n)
    assert model.sizes == executions


async def test_queued_requests_wait_for_the_preferred_size_within_the_delay() -> None:
    model = Model(gate=True)
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=5_000_000,
                            preferred_batch_sizes=(4,))
    batcher = DynamicBatcher(model, config, "m")
    started = time.monotonic()
    blocker = await held(batcher, model)
    early = await queue(batcher, [1, 1])
    model.gate.set()
    check(await blocker, 0, 1)
    await asyncio.sleep(0.05)
    assert model.sizes == [1]  # 2 rows queued < 4 preferred: waiting for more
    late = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in (3, 4)]
    for i, task in enumerate([*early, *late]):
        assert check(await task, i + 1, 1)["batch_size"] == 4
    assert model.sizes == [1, 4]
    assert time.monotonic() - started < 4.0  # ran when the 4th row came, not at 5 s


async def test_queued_requests_run_when_the_delay_expires() -> None:
    model = Model(gate=True)
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=300_000)
    batcher = DynamicBatcher(model, config, "m")
    blocker = await held(batcher, model)
    tasks = await queue(batcher, [1, 1])
    model.gate.set()
    check(await blocker, 0, 1)
    oldest = check(await tasks[0], 1, 1)
    assert oldest["queue_s"] >= 0.25 and oldest["batch_size"] == 2  # waited out the delay
    check(await tasks[1], 2, 1)
    assert model.sizes == [1, 2]


# --- bounds and failures ---------------------------------------------------------------------

async def test_a_full_queue_answers_server_busy_with_retry_after() -> None:
    model = Model(gate=True)
    batcher = DynamicBatcher(model, BatchingConfig(max_queue_size=2), "m")
    blocker = await held(batcher, model)
    tasks = await queue(batcher, [1, 1])
    with pytest.raises(errors.ServerBusy, match="max_queue_size") as busy:
        await batcher.submit(rows(9, 1))
    assert busy.value.retry_after > 0
    assert (busy.value.http_status, busy.value.grpc_code) == (503, "UNAVAILABLE")
    model.gate.set()
    check(await blocker, 0, 1)
    for i, task in enumerate(tasks):
        check(await task, i + 1, 1)


async def test_a_timeout_before_execution_gives_deadline_exceeded() -> None:
    model = Model(gate=True)
    batcher = DynamicBatcher(model, BatchingConfig(), "m")
    blocker = await held(batcher, model)
    with pytest.raises(errors.DeadlineExceeded, match="timed out") as late:
        await batcher.submit(rows(1, 1), timeout_s=0.05)
    assert (late.value.http_status, late.value.grpc_code) == (504, "DEADLINE_EXCEEDED")
    assert batcher.queue_depth == 0  # its slot is free again
    model.gate.set()
    check(await blocker, 0, 1)
    assert model.sizes == [1]  # the expired request never ran


async def test_a_timeout_does_not_cancel_a_running_execution() -> None:
    batcher = DynamicBatcher(Model(delay_s=0.3), BatchingConfig(), "m")
    check(await batcher.submit(rows(1, 2), timeout_s=0.05), 1, 2)


async def test_a_failed_execution_fails_every_request_in_it() -> None:
    model = Model(gate=True, fail_id=2)
    batcher = DynamicBatcher(model, BatchingConfig(), "m")
    blocker = await held(batcher, model)
    tasks = await queue(batcher, [1, 2, 1])  # ids 1..3, one batch; id 2 is poison
    model.gate.set()
    check(await blocker, 0, 1)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) and "poison" in str(r) for r in results)
    check(await batcher.submit(rows(4, 1)), 4, 1)  # the batcher keeps working


@pytest.mark.parametrize("short", ["y", "id", "boxes"])
async def test_a_wrong_output_shape_is_an_error_not_a_mixup(short: str) -> None:
    async def bad_run(batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = expected(batch)
        outputs[short] = outputs[short][:-1]
        return outputs

    batcher = DynamicBatcher(bad_run, BatchingConfig(), "m")
    with pytest.raises(errors.RepositoryError, match=f"output '{short}'.*batch of 3 rows"):
        await batcher.submit(rows(1, 3))


async def test_close_finishes_queued_requests_and_refuses_new_ones() -> None:
    model = Model(gate=True)
    config = BatchingConfig(max_batch_size=2, max_queue_delay_us=5_000_000)
    batcher = DynamicBatcher(model, config, "m")
    blocker = await held(batcher, model)
    tasks = await queue(batcher, [1, 1, 1])
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    with pytest.raises(errors.ModelNotReady):
        await batcher.submit(rows(9, 1))
    model.gate.set()
    started = time.monotonic()
    await closing
    assert time.monotonic() - started < 4.0  # no waiting out the delay for rows to come
    check(await blocker, 0, 1)
    for i, task in enumerate(tasks):
        check(await task, i + 1, 1)
    assert batcher.queue_depth == 0 and model.sizes == [1, 2, 1]


async def test_cancelled_submitters_do_not_break_the_batcher() -> None:
    model = Model(gate=True)
    batcher = DynamicBatcher(model, BatchingConfig(), "m")
    blocker = await held(batcher, model)
    gone, stays = await queue(batcher, [1, 1])
    gone.cancel()
    blocker.cancel()  # its client went away mid-execution
    await until(lambda: batcher.queue_depth == 1)
    model.gate.set()
    check(await stays, 2, 1)
    for task in (gone, blocker):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert model.sizes == [1, 1]  # the cancelled queued request never ran
    check(await batcher.submit(rows(3, 1)), 3, 1)


# --- end to end: config.json -> real server ----------------------------------------------------

def test_batching_through_the_real_server(
        tmp_path: Path, publish: Callable[..., Path],
        serve_app: Callable[[Starlette], AbstractContextManager[str]],
        image_bytes: list[bytes], reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    # Seed 0: the weights reference_probs runs. "tiny" has a long delay (a lone request must
    # not wait it out); "burst" none, so the concurrent part does not wait either.
    for name, delay_us in (("tiny", 2_000_000), ("burst", 0)):
        publish(tmp_path, name)
        (tmp_path / name / "config.json").write_text(json.dumps({"dynamic_batching": {
            "max_batch_size": 4, "max_queue_delay_us": delay_us}}))

    def body(i: int, **parameters: Any) -> dict[str, Any]:
        image = base64.b64encode(image_bytes[i % len(image_bytes)]).decode()
        return {"parameters": parameters, "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}

    with serve_app(create_app(tmp_path)) as url, httpx.Client(base_url=f"http://{url}",
                                                               timeout=30) as http:
        started = time.monotonic()  # a lone request does not wait out the 2 s delay
        assert http.post("/v2/models/tiny/infer", json=body(0)).status_code == 200
        assert time.monotonic() - started < 1.5
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(
                lambda i: http.post("/v2/models/burst/infer", json=body(i)), range(16)))
        for i, response in enumerate(responses):
            assert response.status_code == 200, response.text
            got = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
            want = reference_probs([image_bytes[i % len(image_bytes)]])[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        bad = http.post("/v2/models/tiny/infer", json=body(0, timeout=-5))
        assert bad.status_code == 400 and "'timeout'" in bad.json()["error"]


def test_full_queue_answers_503_with_retry_after_through_the_real_server(
        tmp_path: Path, serve_app: Callable[[Starlette], AbstractContextManager[str]]) -> None:
    # A deliberately slow model (a wide 3x3 conv at full resolution, tens of ms per image) and a
    # queue of one: while one request executes and one waits, the rest must be turned away with
    # 503 + Retry-After, never a 500 and never a hang.
    from torch import nn

    from modelmint._data.preprocess import ImageSpec
    from modelmint._repository import ModelMetadata, ModelRepository
    from modelmint._search.publish import publish_classifier

    slow = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 2))
    meta = ModelMetadata(name="slow", labels=["a", "b"], architecture="slow-cnn",
                         preprocessing=ImageSpec())
    publish_classifier(ModelRepository(tmp_path), slow, meta)
    (tmp_path / "slow" / "config.json").write_text(json.dumps({"dynamic_batching": {
        "max_batch_size": 4, "max_queue_size": 1}}))
    batch = np.zeros((4, 3, 224, 224), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape),
                        "data": batch.ravel().tolist()}]}
    payload = json.dumps(body).encode()
    with serve_app(create_app(tmp_path)) as url, httpx.Client(
            base_url=f"http://{url}", timeout=60) as http, ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: http.post(
            "/v2/models/slow/infer", content=payload,
            headers={"Content-Type": "application/json"}), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert "queue" in r.json()["error"].lower()
