"""Worker processes forked from one that has already imported NumPy and onnxruntime.

Why: a worker started as a fresh interpreter spends ~250 ms of CPU before it can create its
session, ~2/3 of it importing NumPy and onnxruntime, and a hot update does that beside live
requests. Forked from a process that imported them once, a worker costs only its session
(measured on MobileNetV2: ~55 ms of CPU from fork to a first run, against ~245 ms).

Not :mod:`multiprocessing`'s forkserver: each of its children runs the parent's main script
again first (``mint`` imports the whole CLI), and its process objects would have to carry the
worker's socket through pickling.

The fork server is started on first use with ``python -c BOOTSTRAP FD``, in a process group of
its own but in the server's session (see :mod:`.executors`: a session would be a scheduling
group of its own). It imports what a worker needs, freezes the garbage collector (so children
do not copy every page by touching object headers), then serves one socket.

Protocol (a ``SOCK_SEQPACKET`` socketpair: one JSON array per datagram):

* server → fork server: ``["fork", argv]`` with one file descriptor attached, the worker's end
  of its own socketpair; ``argv`` is :func:`.worker.main`'s, without the descriptor
* fork server → server: ``["forked", pid]`` or ``["error", message]``, one per request, in order
* fork server → server: ``["exited", pid, code, cpu_s]`` once it has reaped a child (``code``
  as :attr:`subprocess.Popen.returncode`: negative for a signal; ``cpu_s`` its user+system CPU)
* EOF from the server: the fork server exits; its children stay until their own sockets close

This module must not import anything heavier than the standard library: the fork server
imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from typing import Any

# argv: the socket's fd. The package is registered without running its ``__init__`` (as the
# worker's bootstrap does: the public API imports the repository, data and training code).
BOOTSTRAP = (
    "import sys\n"
    "from importlib.util import find_spec, module_from_spec\n"
    "sys.modules['modelmint'] = module_from_spec(find_spec('modelmint'))\n"
    "from modelmint._serve.forkserver import serve\n"
    "serve(int(sys.argv[1]))\n"
)
# NumPy's OpenBLAS starts a spinning thread per core at import, at the moment a worker loads
# beside live requests; workers never call BLAS. One thread: the import takes half the CPU
# (measured: 120-230 ms of CPU for 70-130 ms of wall). A value already set wins.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1"}
# Where the worker's idle flag sits in its argv (see worker.main, less the fd).
IDLE_ARG = 6
START_TIMEOUT_S = 120.0


class ForkServerGone(OSError):
    """The fork server died (or was closed) before answering."""


class Forked:
    """A worker forked by the fork server: the part of :class:`subprocess.Popen` that
    :class:`.executors.ProcessExecutor` uses. Its exit status comes from the fork server, which
    reaps it; if the fork server dies first, the exit is seen through a pidfd and its status is
    lost (``status_lost``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.status_lost = False
        self._done = threading.Event()
        self._lock = threading.Lock()  # kill() never uses the pidfd once it is closed
        # Signals through a pidfd reach this process, never one that reused its pid later.
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone: its "exited" message is on its way
            self._pidfd = None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock, contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exited(self, code: int, lost: bool = False) -> None:
        with self._lock:
            self.returncode, self.status_lost = code, lost
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._done.set()


class ForkServer:
    """The server side: start the fork server, ask it for workers, learn when they exit."""

    reaped_cpu_s = 0.0  # every fork server's reaped children, for :mod:`.phases`

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**WORKER_ENV, **os.environ}
        try:
            # Its own process group, the server's session: see executors._spawn.
            self.proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=env, process_group=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()  # one request at a time: replies come back in order
        self._replies: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._children: dict[int, Forked] = {}
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="modelmint-forkserver",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fork(self, fd: int, argv: list[str]) -> Forked:
        """A worker running ``worker.main([<its copy of fd>, *argv])``."""
        with self._lock:
            if self.dead is not None:
                raise ForkServerGone(self.dead)
            try:
                socket.send_fds(self._sock, [json.dumps(["fork", argv]).encode()], [fd])
                reply = self._replies.get(timeout=START_TIMEOUT_S)
            except (OSError, queue.Empty) as exc:
                raise ForkServerGone(f"the fork server did not answer ({exc!r})") from None
        if reply is None:
            raise ForkServerGone(self.dead or "the fork server exited")
        if reply[0] != "forked":
            raise OSError(f"the fork server could not fork a worker: {reply[1]}")
        forked: Forked = reply[1]
        return forked

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if message[0] == "forked":
                # The handle itself goes with the reply: a worker that dies at once is out of
                # _children again before the caller could look it up there.
                child = self._children[message[1]] = Forked(message[1])
                self._replies.put(["forked", child])
            elif message[0] == "exited":
                ForkServer.reaped_cpu_s += message[3]
                gone = self._children.pop(message[1], None)
                if gone is not None:
                    gone._exited(message[2])
            else:
                self._replies.put(message)
        code = self.proc.wait()
        self.dead = f"the fork server exited (code {code})"
        self._replies.put(None)
        orphans, self._children = list(self._children.values()), {}
        if orphans:
            threading.Thread(target=_watch_orphans, args=(orphans,), daemon=True,
                             name="modelmint-orphans").start()

    def close(self) -> None:
        """Stop the fork server (workers it forked stay until their own sockets close)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        wait_or_kill(self.proc, 10)
        self._sock.close()


def wait_or_kill(proc: subprocess.Popen[bytes] | Forked, timeout_s: float) -> None:
    """Give ``proc`` ``timeout_s`` to exit, then kill it."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _watch_orphans(orphans: list[Forked]) -> None:
    """Workers whose fork server died: nobody can tell their exit status any more, only the
    exit itself (their pidfds become readable)."""
    waiting = {child._pidfd: child for child in orphans if child._pidfd is not None}
    for child in orphans:
        if child._pidfd is None:
            child._exited(0, lost=True)
    while waiting:
        readable, _, _ = select.select(list(waiting), [], [])
        for fd in readable:
            waiting.pop(fd)._exited(0, lost=True)


_shared: ForkServer | None = None
_shared_lock = threading.Lock()


def fork_worker(fd: int, argv: list[str]) -> Forked:
    """A worker forked from this process's fork server, started on first use and again when
    it has died."""
    global _shared
    for attempt in range(2):
        with _shared_lock:
            if _shared is None or _shared.dead is not None:
                if _shared is None:
                    atexit.register(close_shared)
                _shared = ForkServer()
            server = _shared
        try:
            return server.fork(fd, argv)
        except ForkServerGone:
            if attempt:
                raise
    raise AssertionError("unreachable")


def shared_pid() -> int | None:
    """The running fork server's pid (None before the first worker)."""
    return None if _shared is None or _shared.dead is not None else _shared.pid


def close_shared() -> None:
    global _shared
    with _shared_lock:
        server, _shared = _shared, None
    if server is not None:
        server.close()


# --- the fork server's side -----------------------------------------------------------------

def serve(fd: int) -> None:
    control = socket.socket(fileno=fd)
    # A child's exit is seen through its pidfd, not SIGCHLD: stopping and continuing a loading
    # worker (see gaps.py) would wake this process twice per live request.
    children: dict[int, int] = {}  # pidfd -> pid
    preload()
    gc.freeze()
    while True:
        readable, _, _ = select.select([fd, *children], [], [])
        for pidfd in readable:
            if pidfd != fd and not _reap(control, children.pop(pidfd), pidfd):
                return
        if fd in readable:
            try:
                data, fds, _, _ = socket.recv_fds(control, 65536, 1)
            except OSError:
                return
            if not data:
                return  # the server is gone
            if not _fork(control, children, fds, json.loads(data)[1]):
                return


def preload() -> None:
    """What every worker imports before it creates its session."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    from . import worker  # noqa: F401


def _send(control: socket.socket, message: list[Any]) -> bool:
    try:
        control.send(json.dumps(message).encode())
        return True
    except OSError:
        return False  # the server is gone


def _reap(control: socket.socket, pid: int, pidfd: int) -> bool:
    os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)  # it has exited: does not block
    return _send(control, ["exited", pid, os.waitstatus_to_exitcode(status),
                           usage.ru_utime + usage.ru_stime])


def _fork(control: socket.socket, children: dict[int, int], fds: list[int],
          argv: list[str]) -> bool:
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return _send(control, ["error", f"expected one file descriptor, got {len(fds)}"])
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(fds[0])
        return _send(control, ["error", str(exc)])
    if pid == 0:
        _child(control, children, fds[0], argv)
    os.close(fds[0])
    children[os.pidfd_open(pid)] = pid  # a zombie until reaped: never fails
    return _send(control, ["forked", pid])


def _child(control: socket.socket, children: dict[int, int], fd: int, argv: list[str]
           ) -> None:
    """The worker: never returns."""
    code = 0
    try:
        control.close()
        for pidfd in children:  # its siblings'
            os.close(pidfd)
        # The fork server runs at normal priority; a worker that loads beside live requests
        # only takes idle CPU (see worker.py).
        policy = os.SCHED_IDLE if argv[IDLE_ARG] == "1" else os.SCHED_OTHER
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))
        from .worker import main

        main([str(fd), *argv])
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)
