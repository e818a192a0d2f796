"""``--ray``: trials run as Ray tasks on the suite's local Ray cluster (``ray_cluster`` in
tests/conftest.py; ``MINT_TEST_RAY=0`` skips it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.timeout(400)
def test_trials_run_on_ray(tiny_images: Path, tmp_path: Path, ray_cluster: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelmint.cli", "train", str(tiny_images), "--name", "onray",
         "--repo", str(tmp_path / "models"), "--runs-dir", str(tmp_path / "runs"),
         "--budget", "240", "--max-trials", "1", "--candidates", "mobilenet_v2/*",
         "--ray", ray_cluster.address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=380)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["version"] == 1
    ran = [t for t in result["trials"] if t["state"] in ("complete", "pruned")]
    assert ran and all(not t["worker"].endswith(f":{proc.pid}") for t in ran), \
        "a trial ran in the coordinating process, not on Ray"
