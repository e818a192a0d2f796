"""Loading workers run only in the gaps between live requests.

Why: ``SCHED_IDLE`` keeps a loading worker from taking a core that a request wants, but not
from slowing the request on the core beside it (shared caches, memory bandwidth, and on a VM
possibly the same physical core). Measured on this project's 2-core VM at 60 % load: two
busy-looping ``SCHED_IDLE`` processes took the requests' p99 from 15.7 to 27.2 ms.

So while any live request is in flight, every loading worker is stopped (``SIGSTOP``), and it
goes on (``SIGCONT``) once none is. A loader is held this way for at most
:data:`HOLD_BUDGET_S` in all: under a load with no gaps it would otherwise never finish, so
past its budget it is left to run at idle priority, as it would without gaps.

Used by the data plane (:meth:`LoaderGate.enter` / :meth:`LoaderGate.leave` around each live
request) and by :class:`.executors.ProcessExecutor` (a worker that loads at idle priority is
added until it is promoted, stopped or dead). Warm-up runs are not live requests.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Protocol

log = logging.getLogger("modelmint._serve")

HOLD_BUDGET_S = 3.0


class Signalled(Protocol):
    pid: int

    def send_signal(self, sig: int) -> None: ...


class LoaderGate:
    def __init__(self, budget_s: float = HOLD_BUDGET_S) -> None:
        self.budget_s = budget_s
        self._lock = threading.Lock()
        self._inflight = 0
        self._loaders: dict[int, tuple[Signalled, float]] = {}  # pid -> (process, held s)
        self._stopped_at: float | None = None  # when the loaders were last stopped

    def enter(self) -> None:
        with self._lock:
            self._inflight += 1
            if self._inflight == 1 and self._loaders:
                self._stopped_at = time.monotonic()
                for proc, _ in self._loaders.values():
                    _signal(proc, signal.SIGSTOP)

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._resume()

    def add(self, proc: Signalled) -> None:
        with self._lock:
            self._loaders[proc.pid] = (proc, 0.0)
            if self._inflight:
                if self._stopped_at is None:
                    self._stopped_at = time.monotonic()
                _signal(proc, signal.SIGSTOP)

    def remove(self, proc: Signalled) -> None:
        """``proc`` runs on from here on (called before it is promoted, stopped or waited
        for)."""
        with self._lock:
            if self._loaders.pop(proc.pid, None) is not None and self._inflight:
                _signal(proc, signal.SIGCONT)

    def holding(self) -> list[int]:
        with self._lock:
            return list(self._loaders)

    def _resume(self) -> None:
        """Every loader goes on; those past their budget leave the gate."""
        if self._stopped_at is None:
            return
        held = time.monotonic() - self._stopped_at
        self._stopped_at = None
        for pid, (proc, total) in list(self._loaders.items()):
            _signal(proc, signal.SIGCONT)
            if total + held > self.budget_s:
                del self._loaders[pid]
                log.info("worker %d: held %.1f s for live requests; it loads on at idle "
                         "priority", pid, total + held)
            else:
                self._loaders[pid] = (proc, total + held)


def _signal(proc: Signalled, sig: int) -> None:
    with contextlib.suppress(OSError):  # already gone: its owner removes it
        proc.send_signal(sig)


LOADERS = LoaderGate()
