"""The real server assembly (``build_server``, as ``mint serve`` runs it) and the whole web app,
each in a daemon thread on free loopback ports, shared by every test folder that needs them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import uvicorn

from modelmint._app import AppSettings, create_app
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_app(settings: AppSettings) -> Iterator[str]:
    """The whole app (lifespan included) in a daemon thread; yields its base URL."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
