"""The advisor on the defined bottlenecked configuration and on a compute-bound run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modelmint._profile import StepTracer, analyze, write_report
from modelmint._profile.advisor import analyze_summary, load_summary
from modelmint._profile.autotune import decide
from modelmint._profile.workload import Workload, WorkloadConfig


def test_bottlenecked_config_is_input_bound_with_the_transform_stage_named(
        bottlenecked_profile: Path) -> None:
    analysis = analyze(bottlenecked_profile)
    assert analysis.input_bound
    assert analysis.wait_share >= 0.05
    assert analysis.bottleneck_stage == "transform"
    rules = [a.rule for a in analysis.advice]
    assert rules[0] == "input-bound"
    assert "python-transforms" in rules and "workers" in rules and "channels-last" in rules
    python = next(a for a in analysis.advice if a.rule == "python-transforms")
    assert "ms/sample" in python.evidence and "ToTensor" in python.evidence
    assert "batch_colour" in python.setting and python.knob == "tensor_transforms"
    workers = next(a for a in analysis.advice if a.rule == "workers")
    assert "num_workers=0" in workers.evidence
    assert "cores" in workers.evidence  # on 2 cores it says workers compete with compute
    # CPU-only, one process: no GPU or all-reduce advice at all
    assert not {"pin-memory", "mixed-precision", "all-reduce"} & set(rules)
    assert any("no GPU advice" in note for note in analysis.notes)


def test_compute_bound_run_on_cached_batches_is_not_input_bound(
        small_workload: Workload, tmp_path: Path) -> None:
    cached = small_workload.sample_batches(1)
    tracer = StepTracer(tmp_path)
    for _ in range(3):  # three one-batch epochs from memory
        for x, y in tracer.loader(cached):
            small_workload.train_step(x, y, tracer)
            tracer.end_step(samples=len(y))
    tracer.close()
    analysis = analyze(tmp_path)
    assert analysis.classification == "compute-bound"
    assert analysis.bottleneck_stage is None
    assert analysis.wait_share < 0.05
    assert "input-bound" not in [a.rule for a in analysis.advice]


def test_report_html_is_self_contained(bottlenecked_profile: Path) -> None:
    html_path = write_report(bottlenecked_profile)
    html = html_path.read_text()
    assert "<svg" in html and "transform" in html and "Advice" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    report = json.loads((html_path.parent / "report.json").read_text())
    assert report["analysis"]["classification"] == "input-bound"


@pytest.mark.parametrize(("ratios", "kept"), [
    ([1.30, 1.28, 1.35], True),  # clear, consistent gain
    ([1.03, 1.04, 1.02], False),  # consistent but under 5 %
    ([1.40, 0.90, 1.10], False),  # 10 % median, but the rounds scatter ±30 %
    ([0.80, 0.82, 0.79], False),  # slower
])
def test_autotune_keeps_only_gains_of_5_percent_beyond_noise(ratios: list[float],
                                                             kept: bool) -> None:
    assert decide(ratios)[0] is kept


def _summary(wait: float, h2d: float, compute: float, tail: float, *, cuda: bool,
             processes: int = 1, occupancy: dict[str, float] | None = None) -> dict[str, Any]:
    shares = {"wait": wait, "h2d": h2d, "compute": compute, "tail": tail,
              "other": 1 - wait - h2d - compute - tail}
    return {"parts": {k: {"share": v, "median_s": v / 10} for k, v in shares.items()},
            "median_step_s": 0.1, "samples_per_s": 320.0, "steps": 50, "epochs": [],
            "queue_occupancy": occupancy or {}, "pipeline": {},
            "facts": {"num_workers": 4, "cores": 8, "pin_memory": False,
                      "input_shape": [32, 3, 224, 224], "input_channels_last": True},
            "environment": {"cuda": cuda, "cores": 8, "processes": processes}}


def test_gpu_and_all_reduce_advice_only_where_a_gpu_or_several_processes_exist() -> None:
    cpu = analyze_summary(_summary(0.0, 0.10, 0.6, 0.3, cuda=False, processes=1))
    assert [a.rule for a in cpu.advice] == []
    gpu = analyze_summary(_summary(0.0, 0.10, 0.6, 0.3, cuda=True, processes=2))
    assert {"pin-memory", "mixed-precision", "all-reduce"} <= {a.rule for a in gpu.advice}
    assert not gpu.notes


def test_full_output_buffer_while_waiting_blames_the_device_copy() -> None:
    analysis = analyze_summary(_summary(0.3, 0.3, 0.3, 0.05, cuda=False,
                                        occupancy={"input": 0.1, "output": 0.9}))
    assert analysis.input_bound and analysis.bottleneck_stage == "to-device"


def test_advised_tensor_transforms_batch_the_colour_work(hymenoptera: Path, tmp_path: Path,
                                                         backbone_weights: Path) -> None:
    """The python-transforms advice applied: per-sample work is a crop and a flip, the colour
    work is timed as the batch stage, each stage once, and the advice is not repeated."""
    workload = Workload(hymenoptera, WorkloadConfig(
        batch_size=8, image_limit=32, tensor_transforms=True, cache_decoded=True),
        backbone_weights=backbone_weights)
    try:
        x, _ = workload.sample_batches(1)[0]
        assert x.shape == (8, 3, 224, 224) and x.dtype == torch.float32
        # normalised ImageNet statistics: roughly zero-centred, within the clip bounds
        assert float(x.min()) > -2.2 and float(x.max()) < 2.7 and abs(float(x.mean())) < 1.0
        tracer = StepTracer(tmp_path)
        workload.run(tracer, 3)
        tracer.close()
    finally:
        workload.close()
    summary = load_summary(tmp_path)
    stages = summary["pipeline"]["stages"]
    assert stages["batch"]["seconds"] > 0 and stages["transform"]["seconds"] > 0
    # one "transform" call per sample (plus one for the Resize of each first decode): the
    # dataset's own stage() blocks are not timed a second time by instrument_loader
    samples = summary["pipeline"]["samples"]
    assert samples <= stages["transform"]["calls"] <= 2 * samples
    assert summary["facts"]["transform"]["pil_per_sample"] is False
    assert "python-transforms" not in [a.rule for a in analyze_summary(summary).advice]
