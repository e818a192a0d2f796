"""Session-wide fixtures: the sample data and ONE trained model shared by every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from modelmint.train import TrainOptions, TrainResult, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HYMENOPTERA = SHARED / "hymenoptera"
# Long enough for the frozen-backbone head on a loaded 2-core CI machine; it stops early anyway.
TRAIN_BUDGET = float(os.environ.get("MINT_TEST_TRAIN_BUDGET", "90"))


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.fail(f"sample data missing: {HYMENOPTERA} (shared/ must sit beside the repo)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> TrainResult:
    """The hymenoptera model, trained once per test session under a small budget."""
    base = tmp_path_factory.mktemp("trained")
    return train(TrainOptions(data_root=str(hymenoptera), name="bees", repo=str(base / "models"),
                              runs_dir=str(base / "runs"), budget=TRAIN_BUDGET),
                 Console(quiet=True))


@pytest.fixture(scope="session")
def trained_repo(trained: TrainResult) -> Path:
    return Path(trained.run_dir).parents[1] / "models"
