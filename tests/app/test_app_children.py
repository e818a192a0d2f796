"""The app's `mint serve` never outlives the app: killed with SIGKILL (a crash), the app takes its
server with it; and an app that finds the server a previous app of its data dir left running
adopts it, while a recorded pid that now belongs to another process is left alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelmint._app import AppSettings
from modelmint._app.children import ChildRecord, alive, process_start_time
from modelmint._app.serving import Serving, free_port


def wait_until(what: str, check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_the_server_dies_with_a_killed_app(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "mint", free_port()
    app = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "app", "--data-dir",
                            str(data_dir), "--port", str(port), "--allowed-host", "mint.test"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            assert app.poll() is None, app.stderr.read().decode() if app.stderr else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=2,
                                 headers={"Host": "mint.test"}).is_success
            except httpx.TransportError:
                return False

        wait_until("mint app (and its mint serve)", up, 120)
        record = json.loads((data_dir / "serve.json").read_text())
        server = int(record["pid"])
        assert alive(server) and record["ports"]["http"] > 0
        assert httpx.get(f"http://127.0.0.1:{record['ports']['http']}/v2/health/live"
                         ).status_code == 200
        app.kill()
        app.wait(30)
        wait_until("the orphaned mint serve to exit", lambda: not alive(server), 60)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(30)


def test_a_running_server_of_a_crashed_app_is_adopted(tmp_path: Path) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint")
    settings.make_dirs()
    first = Serving(settings)
    first.start()
    try:
        assert first.proc is not None
        server = first.proc.pid
        second = Serving(settings)  # the first app "crashed": it never closed its server
        second.start()
        assert second.pid == server and second.proc is None and second.url == first.url
        assert httpx.get(f"{second.url}/v2/health/live").status_code == 200
        assert ChildRecord.load(settings.data_dir / "serve.json") is not None
        second.close()
        wait_until("the adopted server to stop", lambda: not alive(server), 40)
        assert not (settings.data_dir / "serve.json").exists()
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
        if first.proc is not None:
            first.proc.wait(30)
        first.client.close()


def test_a_recorded_pid_of_another_process_is_left_alone(tmp_path: Path) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint")
    settings.make_dirs()
    other = subprocess.Popen(["sleep", "120"])
    try:
        started = process_start_time(other.pid)
        assert started is not None
        argv = ["sleep", "120"]
        deadline = time.monotonic() + 10  # until the child has exec'd: its argv is sleep's
        while not ChildRecord(other.pid, started, argv).is_running():
            assert time.monotonic() < deadline, "the child never showed sleep's command line"
            time.sleep(0.02)
        assert not ChildRecord(other.pid, started + 1, argv).is_running()  # pid reused
        assert not ChildRecord(other.pid, started, ["sleep", "60"]).is_running()
        # A record whose pid the kernel has since given to `sleep`: not that server any more.
        ChildRecord(other.pid, started - 1, argv, {"http": 9, "grpc": 9}).save(
            settings.data_dir / "serve.json")
        serving = Serving(settings)
        serving.start()
        try:
            assert other.poll() is None  # not stopped
            assert serving.proc is not None and serving.pid != other.pid
            assert httpx.get(f"{serving.url}/v2/health/live").status_code == 200
            saved = ChildRecord.load(settings.data_dir / "serve.json")
            assert saved is not None and saved.pid == serving.pid and saved.is_running()
        finally:
            serving.close()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(10)
