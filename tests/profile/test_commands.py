"""``mint profile RUN_DIR`` and the always-on step trace of ``mint train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelmint._profile.trace import PARTS
from modelmint._search.run import TrainResult
from modelmint.cli import app


def test_mint_profile_prints_the_analysis_and_writes_the_report(
        bottlenecked_profile: Path) -> None:
    result = CliRunner().invoke(app, ["profile", str(bottlenecked_profile), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["classification"] == "input-bound"
    assert data["bottleneck_stage"] == "transform"
    assert Path(data["report"]).is_file()
    text = CliRunner().invoke(app, ["profile", str(bottlenecked_profile)])
    assert text.exit_code == 0 and "setting:" in text.output and "evidence:" in text.output


def test_mint_profile_on_a_folder_without_a_profile_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["profile", str(tmp_path)])
    assert result.exit_code == 2
    assert "summary.json" in result.output and "--profile" in result.output


@pytest.mark.slow
def test_mint_train_writes_its_step_trace(trained: TrainResult) -> None:
    profile = Path(trained.run_dir) / "trials" / "000" / "profile"
    steps = [json.loads(line) for line in (profile / "steps.jsonl").read_text().splitlines()]
    if trained.epochs == 0:
        pytest.skip("the training budget ran out before the first epoch (a loaded machine)")
    assert steps
    for step in steps:
        assert sum(step[p] for p in PARTS) == pytest.approx(step["total"], rel=1e-4, abs=1e-6)
    summary = json.loads((profile / "summary.json").read_text())
    assert summary["steps"] == len(steps)
    assert json.loads((profile / "trace.json").read_text())["traceEvents"]
