"""``--ray``: trials run as Ray tasks on a local head on loopback (``ray`` is in the test extra;
starting the head takes 20-40 s on 2 cores). ``MINT_TEST_RAY=0`` skips it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("MINT_TEST_RAY") == "0",
                                reason="MINT_TEST_RAY=0: no local Ray head")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None and time.monotonic() < deadline, "Ray head did not start"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: the head stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(400)
def test_trials_run_on_ray(tiny_images: Path, tmp_path: Path, ray_address: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelmint.cli", "train", str(tiny_images), "--name", "onray",
         "--repo", str(tmp_path / "models"), "--runs-dir", str(tmp_path / "runs"),
         "--budget", "240", "--max-trials", "2", "--candidates", "mobilenet_v2/*",
         "--ray", ray_address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=380)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["version"] == 1
    ran = [t for t in result["trials"] if t["state"] in ("complete", "pruned")]
    assert ran and all(not t["worker"].endswith(f":{proc.pid}") for t in ran), \
        "a trial ran in the coordinating process, not on Ray"
