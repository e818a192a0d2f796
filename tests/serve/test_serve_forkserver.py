"""Workers are forked from a fork server that imported NumPy and onnxruntime once, and are
supervised as if they were the server's own children: exit codes, signals, kills, and a fork
server that dies under them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from modelmint._repository import ONNX_FILE
from modelmint._serve import DataPlane, forkserver
from modelmint._serve.executors import JEMALLOC, ProcessExecutor
from modelmint._serve.forkserver import BOOTSTRAP

BATCH = np.zeros((1, 3, 224, 224), np.float32)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture()
def onnx(tmp_path: Path, publish: Callable[..., Path]) -> Path:
    return publish(tmp_path, seed=0) / ONNX_FILE


@pytest.fixture()
def fresh() -> Iterator[None]:
    """A fork server of this test's own (a test may kill it)."""
    forkserver.close_shared()
    yield
    forkserver.close_shared()


def test_a_hot_updates_worker_is_forked_not_started_afresh(
        tmp_path: Path, publish: Callable[..., Path], fresh: None) -> None:
    publish(tmp_path, seed=0)
    plane = DataPlane(tmp_path, isolation="process")
    try:
        plane.load()
        server = forkserver.shared_pid()
        assert server is not None
        publish(tmp_path, seed=1)
        plane.lifecycle.reconcile("tiny")
        [pid] = plane.lifecycle.served["tiny"][2].executor.pids()  # type: ignore[union-attr]
        # A child of the fork server, never exec'd: the same program, same arguments.
        assert parent_of(pid) == server
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline == Path(f"/proc/{server}/cmdline").read_bytes()
        assert forkserver.shared_pid() == server  # one fork server for every version
    finally:
        plane.close()


def test_exit_codes_and_signals_come_back_through_the_fork_server(onnx: Path,
                                                                   fresh: None) -> None:
    stopped = ProcessExecutor(onnx, 224, "stopped")
    assert stopped.run(BATCH).result(30)["probabilities"].shape == (1, 2)
    stopped.close()
    assert stopped.proc.returncode == 0  # a clean stop

    gone: list[str] = []
    killed = ProcessExecutor(onnx, 224, "killed", on_exit=gone.append)
    try:
        killed.io()
        os.kill(killed.pid, signal.SIGKILL)
        wait_for(lambda: bool(gone))
        assert gone == ["its worker process was killed by signal 9"]
        assert killed.dead == gone[0]
    finally:
        killed.close()


def test_a_worker_that_will_not_stop_is_killed(onnx: Path, fresh: None) -> None:
    executor = ProcessExecutor(onnx, 224, "frozen")
    executor.io()
    os.kill(executor.pid, signal.SIGSTOP)  # never reads "stop"
    executor.close()  # waits 5 s, then kills it through its pidfd
    assert executor.proc.returncode == -signal.SIGKILL


def test_workers_outlive_their_fork_server_and_a_new_one_takes_over(onnx: Path,
                                                                     fresh: None) -> None:
    gone: list[str] = []
    first = ProcessExecutor(onnx, 224, "first", on_exit=gone.append)
    try:
        first.io()
        old = forkserver.shared_pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: forkserver.shared_pid() is None)
        # Still serving: the fork server only starts workers.
        assert first.run(BATCH).result(30)["probabilities"].shape == (1, 2)
        second = ProcessExecutor(onnx, 224, "second")
        try:
            assert second.run(BATCH).result(30)["probabilities"].shape == (1, 2)
            new = forkserver.shared_pid()
            assert new not in (None, old) and parent_of(second.pid) == new
        finally:
            second.close()
        # Its exit is still noticed, without a status (that went with its fork server).
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: bool(gone))
        assert gone == ["its worker process exited (its exit status went with its fork "
                        "server)"]
    finally:
        first.close()


def test_the_fork_server_imports_nothing_a_worker_does_not_use() -> None:
    code = BOOTSTRAP.replace("serve(int(sys.argv[1]))\n", "")
    code += ("from modelmint._serve.forkserver import preload; preload()\n"
             "print(sorted(m for m in sys.modules if m.startswith(('PIL', 'modelmint._data', "
             "'modelmint._repository', 'torch', 'starlette', 'grpc', 'httpx'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_a_worker_with_another_allocator_is_started_afresh(onnx: Path) -> None:
    """An allocator is chosen before exec (``LD_PRELOAD``): such a worker cannot be forked."""
    if not JEMALLOC.is_file():
        pytest.skip(f"{JEMALLOC} is not installed")
    executor = ProcessExecutor(onnx, 224, "jemalloc", jemalloc=True)
    try:
        assert executor.run(BATCH).result(30)["probabilities"].shape == (1, 2)
        assert parent_of(executor.pid) == os.getpid()
        assert "libjemalloc" in Path(f"/proc/{executor.pid}/maps").read_text()
    finally:
        executor.close()
    assert executor.proc.returncode == 0


def test_a_worker_that_exits_at_once_is_still_handed_over(fresh: None) -> None:
    """Its exit may be read before the caller picks up the fork's reply."""
    server = forkserver.ForkServer()
    replies = server._replies

    class SlowReplies:  # the caller wakes up late: the exit is read meanwhile
        def put(self, item: object) -> None:
            replies.put(item)  # type: ignore[arg-type]

        def get(self, timeout: float | None = None) -> object:
            item = replies.get(timeout=timeout)
            time.sleep(0.5)
            return item

    server._replies = SlowReplies()  # type: ignore[assignment]
    ours, theirs = socket.socketpair()
    try:
        # No shared memory to map: the worker says so and exits at once.
        child = server.fork(theirs.fileno(), ["/nowhere.onnx", "/nowhere-shm", "0", "0", "1",
                                              "1", "0", "[]", "0"])
        assert child.wait(10) == 0
        assert "cannot map the shared memory" in str(Connection(ours.detach()).recv())
    finally:
        server.close()
        theirs.close()
