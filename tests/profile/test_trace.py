"""The step trace: parts sum to the step, waits are where the time went, Chrome trace format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from modelmint._profile import DeepCaptureConfig, StepTracer, instrument_loader, stage
from modelmint._profile.trace import PARTS


class SlowDataset(Dataset[tuple[torch.Tensor, int]]):
    """Each sample costs a known decode and transform time."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with stage("decode"):
            time.sleep(0.002)
        with stage("transform"):
            time.sleep(0.004)
        return torch.randn(3, 16, 16), index % 2


def _train(tracer: StepTracer, loader: DataLoader[tuple[torch.Tensor, int]], epochs: int = 1,
           model: torch.nn.Module | None = None) -> None:
    model = model or torch.nn.Conv2d(3, 4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for x, _y in tracer.loader(loader):
            with tracer.phase("h2d"):
                x = x.contiguous()
            with tracer.phase("compute"):
                model(x).sum().backward()
                time.sleep(0.005)
            with tracer.phase("tail"):
                opt.step()
                opt.zero_grad()
            tracer.end_step(samples=len(x))


def _assert_chrome_trace(path: Path) -> list[dict[str, object]]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict) and isinstance(data["traceEvents"], list)
    events = data["traceEvents"]
    assert events
    for event in events:
        for key in ("ph", "ts", "pid", "tid", "name"):
            assert key in event, (key, event)
        assert isinstance(event["ts"], int | float)
        if event["ph"] == "X":
            assert isinstance(event["dur"], int | float) and event["dur"] >= 0
    return events


def test_parts_sum_to_the_step_and_wait_is_the_loading(tmp_path: Path) -> None:
    loader = instrument_loader(DataLoader(SlowDataset(), batch_size=4))
    tracer = StepTracer(tmp_path)
    _train(tracer, loader, epochs=2)
    out = tracer.close()
    assert out == tmp_path / "profile"
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 12 and {s["epoch"] for s in steps} == {0, 1}
    for step in steps:
        assert sum(step[p] for p in PARTS) == pytest.approx(step["total"], rel=1e-4, abs=1e-6)
        # 4 samples x 6 ms of sleeping in the dataset is waited for inside next()
        assert step["wait"] >= 0.024
        assert step["compute"] >= 0.005
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["parts"][p]["share"] for p in PARTS) == pytest.approx(1.0, abs=1e-6)
    stages = summary["pipeline"]["stages"]
    assert stages["transform"]["ms_per_sample"] >= 4.0
    assert 2.0 <= stages["decode"]["ms_per_sample"] < stages["transform"]["ms_per_sample"]
    assert stages["batch"]["calls"] == 12
    assert summary["queue_occupancy"] == {"input": 1.0, "output": 0.0}
    assert len(summary["epochs"]) == 2


def test_stage_times_come_back_from_worker_processes(tmp_path: Path) -> None:
    loader = instrument_loader(DataLoader(SlowDataset(), batch_size=4, num_workers=2))
    tracer = StepTracer(tmp_path)
    _train(tracer, loader)
    summary = tracer.summary()
    pipeline = summary["pipeline"]
    assert pipeline["samples"] == 24 and not pipeline["in_main_process"]
    assert pipeline["processes"] == 2
    assert pipeline["stages"]["transform"]["calls"] == 24
    assert summary["facts"]["num_workers"] == 2
    assert 0.0 <= summary["queue_occupancy"]["input"] <= 1.0
    assert 0.0 <= summary["queue_occupancy"]["output"] <= 1.0


def test_trace_json_is_chrome_trace_format(tmp_path: Path) -> None:
    tracer = StepTracer(tmp_path)
    _train(tracer, instrument_loader(DataLoader(SlowDataset(), batch_size=8)))
    events = _assert_chrome_trace(tracer.close() / "trace.json")  # type: ignore[operator]
    names = {e["name"] for e in events}
    assert {"step 0", "wait", "compute", "tail", "queue occupancy"} <= names


def test_deep_capture_writes_operator_stats_and_a_capped_trace(tmp_path: Path) -> None:
    deep = DeepCaptureConfig(wait=0, warmup=1, active=2, max_trace_mb=0.05)
    tracer = StepTracer(tmp_path, deep=deep)
    _train(tracer, DataLoader(SlowDataset(), batch_size=4), model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)))
    out = tracer.close()
    assert out is not None
    ops = json.loads((out / "ops.json").read_text())
    names = {row["name"] for row in ops["by_type"]}
    assert any("conv" in name for name in names), names
    assert all(row["calls"] > 0 for row in ops["by_type"])
    assert any("test_trace.py" in row["call_site"] for row in ops["by_call_site"])
    assert ops["peak_memory"]["process_max_rss_mb"] > 0
    path = out / "trace.json"
    _assert_chrome_trace(path)
    meta = json.loads(path.read_text())["otherData"]
    assert meta["dropped_events"] > 0  # 50 KB is far too small for the whole capture
    assert path.stat().st_size <= 0.05 * 2**20


def test_torch_profiler_steps_line_up_with_the_step_trace(tmp_path: Path) -> None:
    deep = DeepCaptureConfig(wait=1, warmup=1, active=2, with_stack=False)
    tracer = StepTracer(tmp_path, deep=deep)
    _train(tracer, DataLoader(SlowDataset(), batch_size=4), model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)))
    out = tracer.close()
    assert out is not None
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    ours = {e["name"]: e for e in events if e.get("cat") == "step"}
    torch_steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    assert torch_steps, "the capture window recorded no ProfilerStep slices"
    for event in torch_steps:  # ProfilerStep#N opens when step N starts, on one clock
        step = ours[f"step {event['name'].split('#')[1]}"]
        assert abs(event["ts"] - step["ts"]) < 0.2 * step["dur"] + 2000, (event, step)
