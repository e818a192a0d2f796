"""When warm-up stops: once the fastest runs stop getting faster. Run times come from a
scripted clock, so the rule is checked exactly, whatever the machine's load."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelmint._serve import warmup as warmup_module
from modelmint._serve.warmup import warmup


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedExecutor:
    """Each run takes the next scripted number of milliseconds on ``clock``."""

    def __init__(self, clock: Clock, run_ms: list[float]) -> None:
        self.clock, self.run_ms, self.runs = clock, run_ms, 0

    def run(self, batch: np.ndarray) -> Future[dict[str, np.ndarray]]:
        self.clock.now += self.run_ms[min(self.runs, len(self.run_ms) - 1)] / 1e3
        self.runs += 1
        done: Future[dict[str, np.ndarray]] = Future()
        done.set_result({"probabilities": np.zeros((1, 2), np.float32)})
        return done


class OneRequest:
    """The part of a loaded version that warm-up uses: one recorded request."""

    ref = type("Ref", (), {"path": Path("m/1")})()

    def warmup_requests(self) -> list[dict[str, Any]]:
        return [{}]

    def prepare(self, request: dict[str, Any]) -> np.ndarray:
        return np.zeros((1, 3, 8, 8), np.float32)

    def respond(self, request: dict[str, Any], outputs: Any) -> None:
        pass


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(warmup_module.time, "perf_counter", clock)
    return clock


def runs(clock: Clock, run_ms: list[float]) -> int:
    executor = ScriptedExecutor(clock, run_ms)
    count = warmup(OneRequest(), executor)  # type: ignore[arg-type]
    assert count == executor.runs
    return count


def test_warm_once_the_fastest_runs_stop_getting_faster(clock: Clock) -> None:
    # ONNX Runtime's first runs are slower; then live requests beside the idle-priority
    # worker make every other run slower, which must not keep warm-up going.
    assert runs(clock, [12, 9, 6, 13, 6, 15, 6, 14, 6, 13, 6, 15, 6, 14, 6, 13]) == 5


def test_not_warm_while_runs_still_get_faster(clock: Clock) -> None:
    assert runs(clock, [20, 16, 12, 9, 7, 6, 6, 6, 6, 6, 6, 6]) == 8
