"""The real server (HTTP + gRPC, worker processes) on free loopback ports, for the sound and
text tests, and the search driver's ``train`` shortcut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from modelmint._search.options import TrainOptions
from modelmint._search.run import train as run_train


def train(data: Path, tmp: Path, candidates: list[str], budget: float = 120.0,
          **options: Any) -> dict[str, Any]:
    """``mint train DATA --budget`` through the search driver, limited to ``candidates``."""
    opts = TrainOptions(data=str(data), name="m", repo=str(tmp / "models"),
                        runs_dir=str(tmp / "runs"), budget=budget, candidates=candidates,
                        **options)
    result = run_train(opts, Console(quiet=True))
    return {**result.to_json(), "report": result.report}
