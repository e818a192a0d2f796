"""What an orchestrator relies on (``deploy/``): SIGTERM drains, so no request the server
accepted fails, and readiness fails while a model it should serve has no ready version."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from modelmint._demo import free_port, start_server
from modelmint._serve.v2client import bytes_request, encode_request


def _infer_body(image: Path) -> tuple[bytes, dict[str, str]]:
    return encode_request(bytes_request("image", [image.read_bytes()]))


def test_sigterm_finishes_every_accepted_request(publish: Callable[..., Path],
                                                 samples: list[Path], tmp_path: Path) -> None:
    publish(tmp_path, "tiny")
    port = free_port()
    proc = start_server(tmp_path, port)
    url = f"http://127.0.0.1:{port}/v2/models/tiny/infer"
    body, headers = _infer_body(samples[0])
    ok, refused, failed = [0], [0], []
    stop = threading.Event()

    def client() -> None:
        # A new connection per request: a refused connect was never accepted (an orchestrator
        # sends it elsewhere); an accepted one must get its answer.
        while not stop.is_set():
            try:
                with httpx.Client(timeout=30) as c:
                    response = c.post(url, content=body, headers=headers)
            except httpx.ConnectError:
                refused[0] += 1
                time.sleep(0.01)
                continue
            except httpx.TransportError as exc:
                failed.append(repr(exc))
                continue
            if response.status_code == 200:
                ok[0] += 1
            else:
                failed.append(f"{response.status_code} {response.text[:200]}")

    # Enough clients that, when the signal comes, some connection is queued in the kernel and
    # some has its request on the way: closing either one at once resets a sent request.
    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        before = ok[0]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if proc.poll() is None:
            proc.kill()
    assert before > 0, "no request was served before the signal"
    assert code == 0, f"mint serve exited {code} on SIGTERM"
    assert failed == [], f"{len(failed)} accepted requests failed: {failed[:3]}"


def test_readiness_fails_while_a_model_has_no_ready_version(publish: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    version = publish(tmp_path, "tiny")
    (version / "model.onnx").write_bytes(b"not a model")  # the only version cannot load
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "serve", str(tmp_path),
                             "--http-port", str(port), "--grpc-port", "-1",
                             "--metrics-port", "-1"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert live.status_code == 200  # alive: the orchestrator must not restart it
        ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
        # Triton's "not ready" is 400; a Kubernetes probe fails on anything outside 200-399.
        assert not 200 <= ready.status_code < 400, ready.text
        assert "has no ready version" in ready.json()["error"]
    finally:
        proc.terminate()
        proc.wait(30)
