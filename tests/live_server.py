"""The real server assembly (``build_server``, as ``mint serve`` runs it) and the whole web app,
each in a daemon thread on free loopback ports, shared by every test folder that needs them."""

from __future__ import annotations

import csv
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
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


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """``check()``'s first truthy value, polled every 0.5 s; the test fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def sms_table(shared: Path, rows: dict[str, int]) -> bytes:
    """A ``label<TAB>text`` upload: the first ``rows[label]`` messages of each label of the
    shared SMS spam sample (``shared`` is the shared data folder)."""
    with open(shared / "sms_spam" / "sms_spam.tsv", newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh, delimiter="\t"))[1:]
    picked = [r for label, n in rows.items() for r in [r for r in table if r[0] == label][:n]]
    return ("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in picked)).encode()
