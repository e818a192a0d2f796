"""The real server assembly (``build_server``, as ``mint serve`` runs it) in a daemon thread on
free loopback ports, shared by every test folder that needs a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from modelmint._serve import DataPlane
from modelmint._serve.server import ModelServer, build_server


@contextmanager
def full_server(repo: Path, isolation: Literal["thread", "process"] = "thread", http_port: int = 0,
                grpc_port: int | None = 0, metrics_port: int | None = None,
                **options: Any) -> Iterator[tuple[ModelServer, DataPlane]]:
    """``isolation="process"`` runs each version in its worker process, as deployed;
    ``grpc_port``/``metrics_port`` None leave that listener off, 0 picks a free port;
    ``options`` go to ``build_server`` (``policy``, ``read_timeout_s``)."""
    dataplane = DataPlane(repo, isolation=isolation)
    dataplane.load()
    server, sock = build_server(dataplane, "127.0.0.1", http_port=http_port,
                                grpc_port=grpc_port, metrics_port=metrics_port, **options)
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
