"""The app's child processes (`mint serve`, `mint train`): started so that they die with the app,
and recorded so that the next app can tell its own leftovers from unrelated processes.

On Linux each child asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``):
the server gets SIGTERM, a trainer SIGINT (it checkpoints and exits "interrupted"). The kernel
sends it when the *thread* that forked the child ends, and the threads that serve requests come
and go, so every child is forked by one thread that lives as long as the process. Elsewhere the
children outlive a crashed app, and the records below let the next app stop or adopt them.

A record names the process by pid, start time (``/proc/<pid>/stat``, clock ticks since boot) and
command line: a pid the kernel gave to another process since does not match all three.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 20.0

# One long-lived thread forks every child (see the module docstring). Never shut down: it ends
# with the interpreter, after the app has stopped its children.
_forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mint-app-children")


@dataclass(frozen=True)
class ChildRecord:
    pid: int
    start_time: int
    argv: list[str]
    ports: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ChildRecord | None:
        """The record at ``path``; None when there is none or it cannot be read."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return cls(pid=int(data["pid"]), start_time=int(data["start_time"]),
                       argv=[str(a) for a in data["argv"]],
                       ports={str(k): int(v) for k, v in data.get("ports", {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def is_running(self) -> bool:
        """The recorded process itself is alive: same pid, start time and command line."""
        return (alive(self.pid) and process_start_time(self.pid) == self.start_time
                and _argv(self.pid) == self.argv)


def spawn(argv: list[str], death_signal: signal.Signals, **popen: Any
          ) -> tuple[subprocess.Popen[bytes], ChildRecord]:
    """Start ``argv`` in its own session (a Ctrl-C at the app's terminal reaches only the app,
    which stops its children itself), set to get ``death_signal`` when the app dies."""
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, start_new_session=True,
                                preexec_fn=_die_with_parent(death_signal), **popen)

    proc = _forker.submit(start).result()
    started = process_start_time(proc.pid)
    return proc, ChildRecord(proc.pid, -1 if started is None else started, list(argv))


def _die_with_parent(death_signal: signal.Signals) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:  # resolved here: the child between fork and exec should only call it
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent:  # the app died before the request took effect
            os.kill(os.getpid(), death_signal)

    return in_child


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None where there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces
    return int(fields[19])


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    # An orphan's zombie lingers where PID 1 does not reap (containers): it is not running.
    return "\nState:\tZ" not in status


def stop(pid: int, first: signal.Signals = signal.SIGTERM, grace_s: float = STOP_GRACE_S
         ) -> None:
    """Send ``first``, wait up to ``grace_s`` for the process to end, then SIGKILL it. For a
    process this app did not start (it cannot wait() on it): its end is seen in /proc."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, first)
    deadline = time.monotonic() + grace_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
