"""``make demo``: train, serve and classify the sample data end to end, over real HTTP on
loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from ._search.options import TrainOptions
from ._search.run import train
from ._serve.v2client import V2Client, bytes_request, classifications
from ._tensor_names import IMAGE_INPUT
from .errors import MintError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(repo: Path, port: int, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """``mint serve`` in a child process; returns once /v2/health/ready answers 200."""
    # Any free gRPC and metrics ports: only HTTP is used here; a busy 8001 or 8002 must not
    # stop the demo (or the end-to-end test, which starts its server the same way).
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "serve", str(repo),
                             "--http-port", str(port), "--grpc-port", "0",
                             "--metrics-port", "0"])
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MintError(f"server exited with code {proc.returncode} before becoming ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise MintError(f"server on port {port} not ready after {timeout:.0f}s")


def run_demo(data: Path, repo: Path, budget: float, rounds: int, console: Console) -> None:
    name = "bees"
    console.rule("1. train")
    result = train(TrainOptions(data=str(data), name=name, repo=str(repo), budget=budget),
                   console)
    for warning in result.warnings:
        console.print(f"[yellow]data check:[/] {warning}")
    console.print(f"published {name} v{result.version}: val accuracy "
                  f"{result.val_accuracy or 0.0:.1%} in {result.train_seconds:.0f}s "
                  f"(winner {(result.winner or {}).get('candidate')}, report "
                  f"{result.version_dir}/report.html)")

    val_dir = Path(data) / "val"
    files = sorted(p for p in val_dir.glob("*/*") if p.is_file() and not p.name.startswith("."))
    requests = [bytes_request(IMAGE_INPUT, [f.read_bytes()], classification=1) for f in files]
    port = free_port()
    console.rule(f"2. serve on http://127.0.0.1:{port}")
    proc = start_server(repo, port)
    try:
        latencies: list[float] = []
        correct = total = 0
        with V2Client(f"http://127.0.0.1:{port}", timeout=30.0) as client:
            for request in requests:  # warm-up pass, not timed
                client.infer(name, request)
            console.rule(f"3. classify {len(files)} val images x {rounds} over HTTP")
            for _ in range(rounds):
                for f, request in zip(files, requests, strict=True):
                    t0 = time.perf_counter()
                    response = client.infer(name, request)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    _, _, label = classifications(response)[0][0]
                    correct += label == f.parent.name
                    total += 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.asarray(latencies)
    table = Table(title="modelmint demo (one image per request, JSON + base64)")
    for col in ("requests", "accuracy", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    table.add_row(str(total), f"{correct / total:.1%}", f"{np.percentile(lat, 50):.1f}",
                  f"{np.percentile(lat, 99):.1f}", f"{lat.max():.1f}")
    console.print(table)
    console.print("server stopped.")
