"""Profiler fixtures: the bottlenecked workload kept small (few images, batch 8, few steps)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelmint._profile import StepTracer
from modelmint._profile.workload import Workload, WorkloadConfig
from modelmint._train.backbone import MOBILENET_V2, weights_path

SMALL = WorkloadConfig(batch_size=8, image_limit=32)
STEPS = 3


@pytest.fixture(scope="session")
def backbone_weights() -> Path:
    """The ImageNet MobileNetV2 weights the trainer installs: the workload starts from them."""
    return weights_path(MOBILENET_V2)


@pytest.fixture(scope="session")
def small_workload(hymenoptera: Path, backbone_weights: Path) -> Iterator[Workload]:
    workload = Workload(hymenoptera, SMALL, backbone_weights=backbone_weights)
    yield workload
    workload.close()


@pytest.fixture(scope="session")
def bottlenecked_profile(small_workload: Workload,
                         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The defined bottlenecked configuration (full-size JPEGs, PIL per-sample chain,
    num_workers=0), profiled for a few steps into a run directory."""
    run_dir = tmp_path_factory.mktemp("bottlenecked")
    tracer = StepTracer(run_dir)
    small_workload.run(tracer, STEPS)
    tracer.close()
    return run_dir
