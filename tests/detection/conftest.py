"""A detector trained once per session by the real ``mint train`` on generated shapes, for every
detection test that needs a published detection model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modelmint._search.options import TrainOptions
from modelmint._search.run import train

from .shapes import make_shapes

MODEL_NAME = "shapes"
# A ceiling, not the plan: ``--max-trials 1`` ends the run once the baseline (data check, feature
# cache, its epochs, publishing) is done, instead of searching on until the budget is spent.
TRAIN_BUDGET = 60.0


def mint(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelmint.cli", *args]


@pytest.fixture(scope="session")
def detector_training(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``mint train --budget --max-trials 1`` on 40 small generated images, in this process
    (torch is imported already; the command's own process is tested by the interrupt test):
    the paths and what ``--json`` prints."""
    base = tmp_path_factory.mktemp("detector")
    data = make_shapes(base / "shapes", images=40, seed=0, size_range=(160, 240))
    result = train(TrainOptions(data=str(data), name=MODEL_NAME, repo=str(base / "models"),
                                runs_dir=str(base / "runs"), budget=TRAIN_BUDGET, max_trials=1,
                                seed=0), Console(quiet=True))
    return {"repo": base / "models", "name": MODEL_NAME, "data": data, "runs": base / "runs",
            "result": json.loads(json.dumps(result.to_json()))}


@pytest.fixture(scope="session")
def trained_detector(detector_training: dict[str, Any]) -> tuple[Path, str, Path]:
    """(model repository, model name, data folder) of the session's published detector."""
    return detector_training["repo"], detector_training["name"], detector_training["data"]
