"""What the benchmarks share: foreign CPU load, robust summaries, JSON last line."""

from __future__ import annotations

import os
import statistics
from pathlib import Path


def foreign_cpu_seconds(own_pids: set[int]) -> float:
    """CPU seconds used so far by every process that is not ours (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own_pids:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def own_tree(root_pid: int) -> set[int]:
    """root_pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "spread": max(values) - min(values)}


class ForeignCpu:
    """CPU seconds used by processes not ours since construction: the machine's busy time
    (/proc/stat, which cannot go backwards) minus our process tree's, reaped children included.

    Summing foreign_cpu_seconds() twice undercounts when foreign processes exit meanwhile
    (their CPU time vanishes from /proc), which can even make the difference negative.
    """

    def __init__(self) -> None:
        self.start = self._busy() - self._own()

    @staticmethod
    def _busy() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        me = os.times()  # children_*: descendants already waited for
        tick = os.sysconf("SC_CLK_TCK")
        live = 0.0
        for pid in own_tree(os.getpid()) - {os.getpid()}:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime, stime, and cutime, cstime: their own children already reaped.
            live += sum(int(x) for x in fields[11:15]) / tick
        return me.user + me.system + me.children_user + me.children_system + live

    def seconds(self) -> float:
        return self._busy() - self._own() - self.start
