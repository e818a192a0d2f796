"""A detector trained once per session by the real ``mint train`` on generated shapes, for every
detection test that needs a published detection model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .shapes import make_shapes

MODEL_NAME = "shapes"
# A ceiling, not the plan: ``--max-trials 1`` ends the run once the baseline (data check, feature
# cache, its epochs, publishing) is done, instead of searching on until the budget is spent.
TRAIN_BUDGET = "60"


def mint(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelmint.cli", *args]


@pytest.fixture(scope="session")
def detector_training(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``mint train --budget --max-trials 1`` on 40 small generated images: the paths and its
    JSON result."""
    base = tmp_path_factory.mktemp("detector")
    data = make_shapes(base / "shapes", images=40, seed=0, size_range=(160, 240))
    proc = subprocess.run(
        mint("train", str(data), "--name", MODEL_NAME, "--repo", str(base / "models"),
             "--runs-dir", str(base / "runs"), "--budget", TRAIN_BUDGET, "--max-trials", "1",
             "--seed", "0", "--json"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"repo": base / "models", "name": MODEL_NAME, "data": data, "runs": base / "runs",
            "result": result}


@pytest.fixture(scope="session")
def trained_detector(detector_training: dict[str, Any]) -> tuple[Path, str, Path]:
    """(model repository, model name, data folder) of the session's published detector."""
    return detector_training["repo"], detector_training["name"], detector_training["data"]
