"""Two ``mint train`` processes share one study in PostgreSQL: a coordinator (baselines,
publishing) and a ``--worker``; every trial is run once, with its own parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from modelmint._search.study_storage import storage_url

BUDGET = 120  # an upper bound: --max-trials 3 ends each process well before it


def mint(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelmint.cli", *args]


@pytest.mark.timeout(240)
def test_two_workers_share_one_study(tiny_images: Path, tmp_path: Path,
                                     postgres_url: str) -> None:
    common = ["--name", "shared", "--repo", str(tmp_path / "models"), "--runs-dir",
              str(tmp_path / "runs"), "--storage", postgres_url, "--budget", str(BUDGET),
              "--candidates", "mobilenet_v2/*", "--max-trials", "3"]
    coordinator = subprocess.Popen(mint("train", str(tiny_images), *common, "--json"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = subprocess.Popen(mint("train", str(tiny_images), *common, "--worker", "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_c, err_c = coordinator.communicate(timeout=200)
    out_w, err_w = worker.communicate(timeout=200)
    assert coordinator.returncode == 0, err_c
    assert worker.returncode == 0, err_w
    published = json.loads(out_c.strip().splitlines()[-1])
    assert published["version"] == 1 and (tmp_path / "models" / "shared" / "1").is_dir()
    assert json.loads(out_w.strip().splitlines()[-1])["version"] is None  # workers never publish

    study = optuna.load_study(study_name="shared:image-classification",
                              storage=storage_url(postgres_url))
    trials = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED}
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "one process ran every trial"
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(params) == len(set(params)), f"two trials with identical parameters: {params}"
    baselines = [t for t in trials if t.user_attrs["candidate"] == "mobilenet_v2/frozen+linear"]
    assert len(baselines) == 1
