"""Where a hot update spends its time, and whose CPU it takes.

Each version's load and unload are timed phase by phase (wall clock, so a client on the same
machine can line its own requests up with them) with the CPU each phase took from the cores
that serve: the loader thread of this process and the version's worker processes. When the
version's load (or its unload) is over, the server logs one line::

    phases {"model": "m", "version": 3, "step": "load",
            "marks": [["loading", t, front, workers], ...]}

``marks`` are the phases in order, each with the wall-clock time it began and the CPU seconds
spent from then until the next mark by the loader thread (``front``) and by the version's
workers; the last mark ends the step.
The hot-update benchmark reads these lines to break an update window down by phase.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from .forkserver import ForkServer

log = logging.getLogger("modelmint._serve")

PREFIX = "phases "


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu_s() -> float:
    """CPU seconds of every child process reaped so far (a stopped worker's teardown shows up
    here once it has been waited for, never in ``/proc``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Forked workers are the fork server's children: it reports their CPU as it reaps them.
    return usage.ru_utime + usage.ru_stime + ForkServer.reaped_cpu_s


class PhaseClock:
    """Marks phase boundaries of one step (``load`` or ``unload``) of one version.

    ``pids`` returns the worker processes whose CPU counts (read at each mark). Marks must all
    come from the thread that runs the step: its CPU time is what loading costs this process.
    """

    def __init__(self, model: str, version: int, step: str,
                 pids: Callable[[], list[int]]) -> None:
        self.model, self.version, self.step, self.pids = model, version, step, pids
        self.marks: list[list[object]] = []
        self._cpu: tuple[float, float] | None = None
        self._known: dict[int, float] = {}
        self._reaped = reaped_children_cpu_s()

    def _workers_cpu(self) -> float:
        for pid in self.pids():
            self._known[pid] = process_cpu_s(pid)
        reaped = reaped_children_cpu_s() - self._reaped
        # A worker reaped since the last reading: its total comes back through RUSAGE_CHILDREN
        # (which then replaces what /proc last said of it).
        alive = {pid: cpu for pid, cpu in self._known.items() if Path(f"/proc/{pid}").exists()}
        gone = sum(cpu for pid, cpu in self._known.items() if pid not in alive)
        return sum(alive.values()) + max(reaped, gone)

    def mark(self, phase: str) -> None:
        now, cpu = time.time(), (time.thread_time(), self._workers_cpu())
        if self.marks and self._cpu is not None:
            self.marks[-1][2:] = [round(a - b, 4) for a, b in zip(cpu, self._cpu, strict=True)]
        self._cpu = cpu
        self.marks.append([phase, now, 0.0, 0.0])

    def done(self, phase: str = "done") -> None:
        """The step is over: the final mark, and the log line."""
        self.mark(phase)
        log.info("%s%s", PREFIX, json.dumps({"model": self.model, "version": self.version,
                                              "step": self.step, "marks": self.marks}))
