"""Loading workers run only in the gaps between live requests, within a budget, and never
once they serve."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelmint._repository import ONNX_FILE
from modelmint._serve.executors import ProcessExecutor
from modelmint._serve.gaps import LOADERS, LoaderGate


def state(pid: int) -> str:
    """R, S, ... or T (stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture()
def loader() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_loader_is_stopped_while_requests_are_in_flight(
        loader: subprocess.Popen[bytes]) -> None:
    gate = LoaderGate(budget_s=60)
    gate.add(loader)
    assert state(loader.pid) != "T"
    gate.enter()
    gate.enter()  # two requests at once
    wait_for(lambda: state(loader.pid) == "T")
    gate.leave()
    time.sleep(0.05)
    assert state(loader.pid) == "T"  # one is still in flight
    gate.leave()
    wait_for(lambda: state(loader.pid) != "T")
    gate.enter()
    wait_for(lambda: state(loader.pid) == "T")
    gate.remove(loader)  # about to serve: it runs on at once
    wait_for(lambda: state(loader.pid) != "T")
    gate.leave()


def test_a_loader_that_arrives_during_a_request_waits_for_its_end(
        loader: subprocess.Popen[bytes]) -> None:
    gate = LoaderGate(budget_s=60)
    gate.enter()
    gate.add(loader)
    wait_for(lambda: state(loader.pid) == "T")
    gate.leave()
    wait_for(lambda: state(loader.pid) != "T")


def test_a_loader_held_past_its_budget_loads_on(loader: subprocess.Popen[bytes]) -> None:
    """Under a load with no gaps it would never finish."""
    gate = LoaderGate(budget_s=0.1)
    gate.add(loader)
    gate.enter()
    time.sleep(0.15)
    gate.leave()
    assert gate.holding() == []
    gate.enter()
    time.sleep(0.05)
    assert state(loader.pid) != "T"
    gate.leave()


def test_a_worker_is_held_only_while_it_loads(tmp_path: Path,
                                              publish: Callable[..., Path]) -> None:
    onnx = publish(tmp_path, seed=0) / ONNX_FILE
    executor = ProcessExecutor(onnx, 224, "loading", idle=True)
    try:
        if not executor.idle:
            pytest.skip("this system does not let a process leave SCHED_IDLE again")
        assert executor.pid in LOADERS.holding()
        executor.io()
        executor.promote()
        assert executor.pid not in LOADERS.holding()
    finally:
        executor.close()
    serving = ProcessExecutor(onnx, 224, "serving", idle=False)
    try:
        assert serving.pid not in LOADERS.holding()
    finally:
        serving.close()
