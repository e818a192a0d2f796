"""Where a model version's ONNX session runs: a thread of this process (the in-process SDK
path, and tests), or a worker process of its own (the server; see :mod:`.worker` for why).

Both take the FP32 ``input`` batch and return a :class:`concurrent.futures.Future` of the
outputs they were built for (the version's declared outputs: name -> array, batch axis first),
so the sync SDK path (``.result()``) and the asyncio front end (``asyncio.wrap_future``) share
one interface. A worker that dies fails its in-flight requests with :class:`WorkerGone` and
tells its owner (``on_exit``): :mod:`.instances` retries them and restarts the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._tensor_names import PROBABILITIES
from ..errors import ModelNotReady, RepositoryError
from .forkserver import IDLE_ARG, WORKER_ENV, Forked, fork_worker, wait_or_kill
from .gaps import LOADERS
from .torch_runner import needs_torch
from .types import GraphTensors, Outputs
from .worker import BOOTSTRAP, can_raise_priority, graph_tensors, run_session

log = logging.getLogger("modelmint._serve")

# Shared-memory slots per worker: requests in flight at once without copying through the pipe.
# Bigger batches (or a burst beyond SLOTS) still work, through the pipe.
SLOTS = 4
SLOT_IMAGES = 8
START_TIMEOUT_S = 120.0
# SCHED_IDLE gets ~0.3% of a core while the others are saturated: a loader that has not
# finished by then is raised to normal priority, so an update still completes under overload.
IDLE_GRACE_S = 10.0
EXIT_STATUS_WAIT_S = 1.0
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


def _spawn(fd: int, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker started as an interpreter of its own (for what must be set before exec, such
    as ``LD_PRELOAD``); otherwise workers are forked (see :mod:`.forkserver`)."""
    return subprocess.Popen(
        [sys.executable, "-c", BOOTSTRAP, str(fd), *argv],
        # Its own process group: a Ctrl-C or a signal to the server's process group is the
        # server's to handle (it stops its workers); a worker whose server died exits on the
        # socket's EOF. Not its own session: with the kernel's autogroups
        # (sched_autogroup_enabled, on by default) a session is a scheduling group of its own
        # with a full share of the CPU, which undid SCHED_IDLE: a loading worker took live
        # requests' p50 from 9 to 16 ms.
        pass_fds=(fd,), env={**WORKER_ENV, **os.environ, **env}, process_group=0)


class WorkerGone(ModelNotReady):
    """The worker process died before answering: the request may run again elsewhere."""


def settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller already gave up on it (cancelled on a timeout)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def raise_priority(pid: int, policy: int = os.SCHED_OTHER) -> None:
    """Set ``policy`` on every thread of ``pid`` (from outside: it is busy)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(int(task.name), policy, os.sched_param(0))


class Executor(Protocol):
    def run(self, batch: np.ndarray) -> Future[Outputs]: ...
    def io(self) -> tuple[GraphTensors, GraphTensors]: ...
    def promote(self) -> None: ...
    def close(self) -> None: ...


class ThreadExecutor:
    """The session in this process, run on a shared bounded thread pool."""

    def __init__(self, onnx: Path, pool: ThreadPoolExecutor,
                 outputs: Sequence[str] = (PROBABILITIES,)) -> None:
        from .worker import _session  # same options as the worker's

        self.pool = pool
        self.outputs = list(outputs)
        try:
            self.session = _session(str(onnx), os.cpu_count() or 1, True,
                                    needs_torch(onnx.parent))
        except RepositoryError:
            raise  # already names the file and the problem
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise RepositoryError(f"{onnx}: onnxruntime cannot load it ({exc})") from exc

    def _run(self, batch: np.ndarray) -> Outputs:
        arrays = run_session(self.session, self.outputs, batch)
        return dict(zip(self.outputs, arrays, strict=True))

    def run(self, batch: np.ndarray) -> Future[Outputs]:
        return self.pool.submit(self._run, batch)

    def io(self) -> tuple[GraphTensors, GraphTensors]:
        return (graph_tensors(self.session.get_inputs()),
                graph_tensors(self.session.get_outputs()))

    def promote(self) -> None:
        pass

    def close(self) -> None:
        self.session = None


class ProcessExecutor:
    """A worker process owning the session; batches travel through a shared-memory slot ring,
    and the outputs come back through the same slot when they fit (else through the pipe).

    ``outputs`` are the output names every run returns. ``idle`` starts the worker under
    ``SCHED_IDLE`` (where the OS allows raising it again) so loading only uses idle CPU; a
    worker that must serve as soon as possible (nothing else serves its version) starts at
    normal priority. ``on_exit(reason)`` is called from the reader thread as soon as the
    worker dies on its own (EOF on its socket), before its in-flight requests fail with
    :class:`WorkerGone`, so the owner stops routing to it first.
    """

    def __init__(self, onnx: Path, crop: int, what: str, *,
                 outputs: Sequence[str] = (PROBABILITIES,), arena: bool = True,
                 jemalloc: bool = False, idle: bool = True,
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.outputs = list(outputs)
        self.on_exit = on_exit
        self.slot_bytes = SLOT_IMAGES * 3 * crop * crop * 4
        self._lock = threading.Lock()
        # Separate from _lock: a big payload being sent must not stop the reader answering.
        self._send_lock = threading.Lock()
        self._free = list(range(SLOTS))
        self._pending: dict[int, tuple[Future[Outputs], int | None]] = {}
        self._next_id = 0
        self._closing = False
        self.dead: str | None = None
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self._shm_path = tempfile.mkstemp(prefix="modelmint-", dir=shm_dir)
        ours, theirs = socket.socketpair()
        try:
            os.ftruncate(fd, SLOTS * self.slot_bytes)
            self._shared = mmap.mmap(fd, SLOTS * self.slot_bytes)
            argv = [str(onnx), self._shm_path, str(SLOTS), str(self.slot_bytes),
                    str(os.cpu_count() or 1), "1" if arena else "0",
                    "1" if idle and can_raise_priority() else "0", json.dumps(self.outputs),
                    "1" if needs_torch(onnx.parent) else "0"]
            self.idle = argv[IDLE_ARG] == "1"
            self.proc: subprocess.Popen[bytes] | Forked
            if jemalloc and JEMALLOC.is_file():  # an allocator is chosen before exec
                self.proc = _spawn(theirs.fileno(), argv, {"LD_PRELOAD": str(JEMALLOC)})
            else:
                self.proc = fork_worker(theirs.fileno(), argv)
        except BaseException:
            self._unlink()
            ours.close()
            raise
        finally:
            os.close(fd)
            theirs.close()
        self.conn = Connection(ours.detach())
        self._promoted: Future[bool] = Future()
        self._started: Future[tuple[GraphTensors, GraphTensors]] = Future()
        self._reader = threading.Thread(target=self._read, name=f"modelmint-worker-{what}",
                                        daemon=True)
        self._reader.start()
        self._grace = threading.Timer(IDLE_GRACE_S, self._not_ready_in_time)
        self._grace.daemon = True
        if self.idle:
            self._grace.start()
            LOADERS.add(self.proc)  # only in the gaps between live requests

    def _not_ready_in_time(self) -> None:
        LOADERS.remove(self.proc)
        log.warning("%s: not ready after %.0f s at idle priority (the CPU is saturated); "
                    "raising it to normal priority", self.what, IDLE_GRACE_S)
        raise_priority(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def io(self) -> tuple[GraphTensors, GraphTensors]:
        """Block until the worker has created its session (or failed to)."""
        try:
            return self._started.result(START_TIMEOUT_S)
        finally:
            self._unlink()  # both sides have it mapped by now (or never will)

    def promote(self) -> None:
        self._grace.cancel()
        LOADERS.remove(self.proc)
        self._send(("promote",))
        if not self._promoted.result(10):
            log.warning("%s: could not raise the worker back to SCHED_OTHER", self.what)

    def run(self, batch: np.ndarray) -> Future[Outputs]:
        future: Future[Outputs] = Future()
        with self._lock:
            if self.dead is not None:
                raise WorkerGone(f"{self.what}: {self.dead}")
            request_id = self._next_id
            self._next_id += 1
            slot = (self._free.pop() if self._free and batch.nbytes <= self.slot_bytes
                    else None)
            self._pending[request_id] = (future, slot)
        if slot is None:
            payload: bytes | None = np.ascontiguousarray(batch, np.float32).tobytes()
        else:
            view = np.frombuffer(self._shared, np.float32, batch.size, slot * self.slot_bytes)
            view[:] = batch.ravel()
            payload = None
        self._send(("run", request_id, slot, list(batch.shape), payload))
        return future

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self.conn.send(message)
        except OSError:
            pass  # the reader sees the EOF and fails everything pending

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "ready":
                    self._started.set_result((message[1], message[2]))
                elif kind == "error":
                    self._started.set_exception(RepositoryError(message[1]))
                elif kind == "promoted":
                    self._promoted.set_result(bool(message[1]))
                else:
                    self._answer(message)
        except (EOFError, OSError):
            pass
        LOADERS.remove(self.proc)
        reason = self._exit_reason()
        with self._lock:
            self.dead = reason
        if not self._closing and self.on_exit is not None:
            self.on_exit(reason)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            settle(future, error=WorkerGone(f"{self.what}: {reason} during this request"))
        settle(self._started, error=RepositoryError(f"{self.what}: {reason} while loading"))
        settle(self._promoted, False)

    def _exit_reason(self) -> str:
        # A forked worker's status comes from its fork server: one that is stuck must not
        # keep the worker's requests and its restart waiting.
        try:
            code = self.proc.wait(EXIT_STATUS_WAIT_S)
        except subprocess.TimeoutExpired:
            return "its worker process closed its connection (no exit status yet)"
        if getattr(self.proc, "status_lost", False):
            return "its worker process exited (its exit status went with its fork server)"
        if code >= 0:
            return f"its worker process exited (code {code})"
        return f"its worker process was killed by signal {-code}"

    def _answer(self, message: tuple[Any, ...]) -> None:
        kind, request_id = message[0], message[1]
        with self._lock:
            future, slot = self._pending.pop(request_id)
        if kind == "err":
            result: Outputs | None = None
            error = RepositoryError(f"{self.what}: onnxruntime failed: {message[2]}")
        else:
            layout, payloads = message[2], message[3]
            result = {}
            for i, (name, (dtype, shape, offset)) in enumerate(
                    zip(self.outputs, layout, strict=True)):
                count = int(np.prod(shape))
                if payloads is None:
                    assert slot is not None
                    result[name] = np.frombuffer(
                        self._shared, np.dtype(dtype), count,
                        slot * self.slot_bytes + offset).reshape(shape).copy()
                else:
                    result[name] = np.frombuffer(payloads[i], np.dtype(dtype)).reshape(shape)
        if slot is not None:
            with self._lock:
                self._free.append(slot)
        if result is None:
            settle(future, error=error)
        else:
            settle(future, result)

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._shm_path)

    def close(self) -> None:
        """Stop the worker (its in-flight requests have drained before this is called)."""
        self._closing = True
        self._grace.cancel()
        LOADERS.remove(self.proc)
        # Drained: tearing down its session (freeing ~100 MB) only gets idle CPU, like loading.
        # Not once it has been reaped: its pid may already name another process.
        if self.proc.returncode is None:
            raise_priority(self.proc.pid, os.SCHED_IDLE)
        self._send(("stop",))
        wait_or_kill(self.proc, 5)
        self.conn.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)
        self._unlink()
        with contextlib.suppress(BufferError):  # a caller still holding a view keeps it mapped
            self._shared.close()
