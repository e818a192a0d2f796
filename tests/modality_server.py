"""The real server (HTTP + gRPC, worker processes) on free loopback ports, for the sound and
text tests (tests/serve/conftest.py keeps its helpers as fixtures local to that folder)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from modelmint.search.driver import SearchOptions
from modelmint.search.run import search
from modelmint.serve import DataPlane
from modelmint.serve.server import ModelServer, build_server


@contextmanager
def full_server(repo: Path) -> Iterator[tuple[ModelServer, DataPlane]]:
    """``build_server`` as ``mint serve`` runs it, workers in processes, in a daemon thread."""
    dataplane = DataPlane(repo, isolation="process")
    dataplane.load()
    server, sock = build_server(dataplane, "127.0.0.1", http_port=0, grpc_port=0,
                                metrics_port=None)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield server, dataplane
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        dataplane.close()


def train(data: Path, tmp: Path, candidates: list[str], budget: float = 120.0,
          **options: Any) -> dict[str, Any]:
    """``mint train DATA --budget`` through the search driver, limited to ``candidates``."""
    opts = SearchOptions(data=str(data), name="m", repo=str(tmp / "models"),
                         runs_dir=str(tmp / "runs"), budget=budget, candidates=candidates,
                         **options)
    return search(opts, Console(quiet=True))
