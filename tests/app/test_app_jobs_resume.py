"""A training job survives the app: the app is killed (SIGKILL, as in a crash) while `mint train`
runs; the next app start stops the orphaned trainer, marks the job interrupted, and resuming it
continues the same run directory (`mint train --resume`) to a published version."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

PER_CLASS = {"train": 12, "val": 5}  # a small slice of the sample: this test is about the job
BUDGET = 60  # a ceiling: with max_trials 1 the search ends after its baseline


@contextmanager
def app_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "app", "--data-dir",
                             str(data_dir), "--port", str(port),
                             "--serve-url", "http://127.0.0.1:9"])
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "mint app exited"
            assert time.monotonic() < deadline, "mint app did not start"
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_job_resumes_after_the_app_is_killed(tmp_path: Path, hymenoptera: Path,
                                             make_zip: Callable[[dict[str, bytes]], bytes]
                                             ) -> None:
    entries = {}
    for split, n in PER_CLASS.items():
        for label in ("ants", "bees"):
            for path in sorted((hymenoptera / split / label).glob("*.jpg"))[:n]:
                entries[f"{split}/{label}/{path.name}"] = path.read_bytes()
    data_dir, port = tmp_path / "mint", free_port()
    base = f"http://127.0.0.1:{port}"
    with app_process(data_dir, port) as app:
        project = httpx.post(f"{base}/api/projects", json={"name": "small"}).json()["id"]
        up = httpx.post(f"{base}/api/projects/{project}/uploads",
                        params={"filename": "small.zip"}, content=make_zip(entries), timeout=60)
        assert up.json()["added"] == 34
        job = httpx.post(f"{base}/api/projects/{project}/jobs", json={"budget": BUDGET,
                                                                        "max_trials": 1}).json()
        wait_until("training to start", lambda: list(
            (data_dir / "jobs" / str(job["id"]) / "runs").glob("*-*/run.json")), 120)
        pid = int(job["pid"])
        app.kill()  # a crash: no shutdown, the trainer (own session) keeps running
        app.wait(30)
        assert alive(pid)
    with app_process(data_dir, port):
        trainer = httpx.get(f"{base}/api/jobs/{job['id']}").json()
        assert trainer["status"] == "interrupted", trainer
        assert "resume" in trainer["error"]
        assert not alive(pid)  # the orphan was stopped before anything could race it
        resumed = httpx.post(f"{base}/api/jobs/{job['id']}/resume").json()
        assert resumed["status"] == "running" and resumed["attempts"] == 2
        again = httpx.post(f"{base}/api/jobs/{job['id']}/resume")
        assert again.status_code == 400 and "running" in again.json()["error"]
        done = wait_until("the resumed job", lambda: (lambda j: j if j["status"] != "running"
                                                      else None)(
            httpx.get(f"{base}/api/jobs/{job['id']}").json()), 8 * BUDGET)
        assert done["status"] == "succeeded", done
        assert done["version"] == 1
        run_dirs = list((data_dir / "jobs" / str(job["id"]) / "runs").glob("*-*"))
        assert len(run_dirs) == 1  # continued, not restarted
