"""``run_server`` as a real process: the ready line, serving, clean exit on SIGTERM/SIGINT; and
the serving side never imports torch."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient

SERVE = ("import sys; from modelmint._serve import run_server; "
         "run_server(sys.argv[1], http_port=0, grpc_port=0, metrics_port=0)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_server_ready_line_and_clean_shutdown(repo_root: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(repo_root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"serving 1 model\(s\) on (http://127\.0\.0\.1:\d+) and "
                             r"grpc://(127\.0\.0\.1:\d+)\n", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url, grpc_address = match.groups()
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/v2/models/tiny").json()["versions"] == ["2"]
        grpc = grpcclient.InferenceServerClient(grpc_address)
        assert grpc.is_server_ready()
        grpc.close()
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_server_refuses_a_busy_port(repo_root: Path) -> None:
    from modelmint._serve import run_server
    from modelmint._serve.server import bind_socket
    from modelmint.errors import MintError

    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(MintError, match="cannot listen"):
            run_server(repo_root, http_port=taken.getsockname()[1])
    finally:
        taken.close()


def test_run_server_refuses_a_busy_grpc_port(repo_root: Path) -> None:
    from modelmint._serve import run_server
    from modelmint._serve.server import bind_socket
    from modelmint.errors import MintError

    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(MintError, match=r"cannot listen .* for gRPC"):
            run_server(repo_root, http_port=0, grpc_port=taken.getsockname()[1])
    finally:
        taken.close()


def test_run_server_without_grpc(repo_root: Path) -> None:
    code = ("import sys; from modelmint._serve import run_server; "
            "run_server(sys.argv[1], http_port=0, grpc_port=None, metrics_port=None)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo_root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"serving 1 model\(s\) on http://127\.0\.0\.1:\d+\n", line), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serving_never_imports_torch() -> None:
    code = ("import sys, modelmint._serve, modelmint._client; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, "importing modelmint._serve/client pulled in torch"


def test_run_server_refuses_an_unknown_log_level(repo_root: Path) -> None:
    from modelmint._serve import run_server
    from modelmint.errors import InvalidInput

    with pytest.raises(InvalidInput, match="log level 'loud': expected one of debug, info"):
        run_server(repo_root, http_port=0, log_level="loud")
