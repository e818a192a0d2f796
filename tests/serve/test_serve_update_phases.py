"""What a hot update does beside live requests: its phases are logged with their times and
CPU, and its worker processes are scheduled as the server's own (so SCHED_IDLE holds)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modelmint._serve import DataPlane
from modelmint._serve.lifecycle import UNLOADED
from modelmint._serve.phases import PREFIX, PhaseClock, process_cpu_s
from modelmint._serve.worker import BOOTSTRAP


def steps(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()[len(PREFIX):]) for r in caplog.records
            if r.getMessage().startswith(PREFIX)]


def test_a_hot_update_logs_each_phase_with_its_time_and_cpu(
        tmp_path: Path, publish: Callable[..., Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelmint._serve")
    publish(tmp_path, seed=0)
    plane = DataPlane(tmp_path, isolation="process")
    try:
        plane.load()
        publish(tmp_path, seed=1)
        plane.lifecycle.reconcile("tiny")  # what a poll does: load 2, then unload 1
        assert {e["version"]: e["state"] for e in plane.repository_index()}["1"] == UNLOADED
    finally:
        plane.close()
    loads = [s for s in steps(caplog) if s["step"] == "load"]
    [unload] = [s for s in steps(caplog) if s["step"] == "unload"]
    assert [s["version"] for s in loads] == [1, 2] and unload["version"] == 1
    for step, names in [(loads[1], ["loading", "warming", "ready"]),
                        (unload, ["draining", "stopping", "releasing", "done"])]:
        marks = step["marks"]
        assert isinstance(marks, list) and [m[0] for m in marks] == names
        times = [m[1] for m in marks]
        assert times == sorted(times) and time.time() - 60 < times[0] <= time.time()
        assert all(front >= 0 and workers >= 0 for _, _, front, workers in marks)
    # The stopped worker's CPU reaches us once it is reaped; its whole life is not counted.
    assert unload["marks"][1][3] < loads[1]["marks"][0][3] + loads[1]["marks"][1][3] + 1


def test_a_phase_counts_the_cpu_its_workers_took() -> None:
    """Read from /proc while a worker lives (10 ms ticks), from its reaping once it is gone."""
    burn = ("import time\nend = time.thread_time() + 0.2\nwhile time.thread_time() < end: pass\n"
            "import sys; sys.stdin.read()\n")
    worker = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, text=True)
    try:
        clock = PhaseClock("m", 1, "load", lambda: [worker.pid])
        clock.mark("busy")
        deadline = time.monotonic() + 30
        while process_cpu_s(worker.pid) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.02)
        clock.mark("gone")
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(30)
        clock.mark("after")
    finally:
        worker.kill()
        worker.wait()
    busy, gone = clock.marks[0][3], clock.marks[1][3]
    assert isinstance(busy, float) and busy >= 0.15
    assert isinstance(gone, float) and gone < 0.1  # not counted twice once reaped


def test_workers_are_in_the_server_session_and_scheduling_group(
        tmp_path: Path, publish: Callable[..., Path]) -> None:
    publish(tmp_path, seed=0)
    plane = DataPlane(tmp_path, isolation="process")
    try:
        plane.load()
        [pid] = plane.lifecycle.served["tiny"][1].executor.pids()  # type: ignore[union-attr]
        # A session of its own would be an autogroup of its own, with a full share of the CPU
        # whatever its threads' policy: SCHED_IDLE would not keep a loading worker out of
        # the way of live requests.
        assert os.getsid(pid) == os.getsid(0)
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text() == Path("/proc/self/autogroup").read_text()
        # Its own process group still: a Ctrl-C to the server's group is the server's.
        assert os.getpgid(pid) != os.getpgid(0)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        expected = os.environ.get("OPENBLAS_NUM_THREADS", "1")
        assert f"OPENBLAS_NUM_THREADS={expected}".encode() in environ
    finally:
        plane.close()


def test_a_worker_imports_nothing_it_does_not_use(tmp_path: Path,
                                                  publish: Callable[..., Path]) -> None:
    onnx = publish(tmp_path, seed=0) / "model.onnx"
    code = BOOTSTRAP.replace("main(sys.argv[1:])\n", "").replace(
        "if sys.argv[8] == '1':\n    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n",
        "")
    # What a worker imports up to serving: its module, then onnxruntime and the session.
    code += (f"from modelmint._serve.worker import _session; _session({str(onnx)!r}, 1, True, "
             "False)\n"
             "print(sorted(m for m in sys.modules if m.startswith(('PIL', 'modelmint._data', "
             "'modelmint._repository', 'torch', 'starlette', 'grpc'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_a_worker_runs_requests_side_by_side() -> None:
    """ONNX Runtime runs concurrent requests on one session; one at a time left a core idle
    while the other finished its part of each request. Two runs that each wait for the other
    can only both succeed if the worker runs them at once."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    import numpy as np

    from modelmint._serve.worker import _serve

    both = threading.Barrier(2)

    class WaitsForTheOther:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            both.wait(timeout=20)
            return [feeds["input"] * 2]

    ours, theirs = socket.socketpair()
    parent, child = Connection(ours.detach()), Connection(theirs.detach())
    worker = threading.Thread(target=_serve, args=(child, WaitsForTheOther(), ["out"], None, 0,
                                                   2))
    worker.start()
    try:
        for request_id in (1, 2):
            payload = np.full((1, 2), request_id, np.float32).tobytes()
            parent.send(("run", request_id, None, [1, 2], payload))
        answers = {}
        for _ in range(2):
            kind, request_id, *rest = parent.recv()
            answers[request_id] = (kind, rest)
        assert {k: v[0] for k, v in answers.items()} == {1: "ok", 2: "ok"}, answers
        data = np.frombuffer(answers[2][1][1][0], np.float32)
        assert data.tolist() == [4.0, 4.0]
    finally:
        parent.send(("stop",))
        worker.join(30)
        parent.close()
        child.close()
