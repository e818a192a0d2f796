"""Ctrl-C keeps a checkpoint and --resume finishes the run with exactly the weights, epochs and
accuracy of an uninterrupted run with the same seed (so fixed-epoch runs are deterministic)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> Path:
    """16 train and 8 val images per class: enough to train in seconds."""
    root = tmp_path_factory.mktemp("subset")
    for split, n in (("train", 16), ("val", 8)):
        for c in ("ants", "bees"):
            (root / split / c).mkdir(parents=True)
            files = sorted(p for p in (hymenoptera / split / c).iterdir() if p.suffix == ".jpg")
            for f in files[:n]:
                shutil.copy(f, root / split / c / f.name)
    return root


def mint(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelmint.cli", *args]


def train_cmd(data: Path, base: Path, epochs: int = 6) -> list[str]:
    # Enough fine-tune epochs (~0.7 s each) that an interrupt sent after the first one lands
    # inside training, not in export/publishing: with 3, CI once saw the run finish first.
    return mint("train", str(data), "--name", "sub", "--repo", str(base / "models"),
                "--runs-dir", str(base / "runs"), "--epochs", str(epochs), "--seed", "0", "--json")


def weights(base: Path, version: int = 1) -> dict:
    return load_file(str(base / "models" / "sub" / str(version) / "model.safetensors"))


def test_interrupt_then_resume_matches_uninterrupted(subset: Path, tmp_path: Path) -> None:
    # The uninterrupted run that the resumed one must reproduce exactly runs meanwhile: on a
    # busy CPU it is slower, not different.
    reference_base = tmp_path / "reference"
    uninterrupted = subprocess.Popen(train_cmd(subset, reference_base), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    base = tmp_path / "cut"
    proc = subprocess.Popen(train_cmd(subset, base), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = base / "runs" / "sub-1" / "trials" / "000" / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and '"stage": "finetune"' in log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "mint train --resume" in err
    run_dir = base / "runs" / "sub-1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert (run_dir / "trials" / "000" / "checkpoint.pt").exists()
    assert not (base / "models" / "sub").exists() or not any((base / "models" / "sub").iterdir())

    resumed = subprocess.run(mint("train", "--resume", str(run_dir), "--json"),
                             capture_output=True, text=True, check=True)
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["version"] == 1
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err
    reference = reference_base, json.loads(out.strip().splitlines()[-1])
    # Bit for bit what the uninterrupted run made: the fixed-epoch plan with its seed is
    # deterministic, and the checkpoint carries every random state across the interrupt.
    assert result["epochs"] == reference[1]["epochs"]
    assert result["val_accuracy"] == reference[1]["val_accuracy"]
    a, b = weights(reference[0]), weights(base)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from an uninterrupted run"

    again = subprocess.run(mint("train", "--resume", str(run_dir)), capture_output=True,
                           text=True)
    assert again.returncode == 2 and "already published" in again.stderr


def test_stratified_subset_keeps_proportions() -> None:
    from modelmint._train.cache import stratified_subset

    items = [(f"a{i}", 0) for i in range(30)] + [(f"b{i}", 1) for i in range(10)]
    subset = stratified_subset(items, 8)
    assert len(subset) == 8
    assert sum(y == 0 for _, y in subset) == 6 and sum(y == 1 for _, y in subset) == 2
    assert stratified_subset(items, 100) == items
