"""``run_server``: load the repository, bind, serve V2 over HTTP (uvicorn) and gRPC (grpc.aio)
from one process and one event loop, stop both cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import uvicorn

from .._settings import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_METRICS_PORT,
)
from ..errors import MintError
from .dataplane import DataPlane
from .grpc import GrpcServer
from .http import create_app
from .metrics import MetricsServer

log = logging.getLogger("modelmint._serve")


class ModelServer(uvicorn.Server):
    """uvicorn serving the HTTP app, with the gRPC and metrics servers (if any) on the same
    event loop.

    gRPC starts before HTTP (a busy gRPC port fails before anything is served), stops
    alongside HTTP's graceful shutdown, and the one "ready" line is printed only once both
    sockets are actually being served.
    """

    def __init__(self, config: uvicorn.Config, url: str, model_count: int,
                 grpc: GrpcServer | None = None, metrics: MetricsServer | None = None) -> None:
        super().__init__(config)
        self.url = url
        self.model_count = model_count
        self.grpc = grpc
        self.metrics = metrics

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            if self.grpc is not None:
                await self.grpc.start()
            if self.metrics is not None:
                await self.metrics.start()
            await super().serve(sockets)
        finally:
            if self.grpc is not None:  # startup failed, or shutdown already stopped it
                await self.grpc.stop()
            if self.metrics is not None:
                await self.metrics.stop()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            where = self.url if self.grpc is None else f"{self.url} and grpc://{self.grpc.address}"
            print(f"serving {self.model_count} model(s) on {where}", flush=True)
            if self.metrics is not None:  # a line of its own: the first one's format is kept
                print(f"metrics on {self.metrics.url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Concurrently: each protocol's in-flight requests get their grace period at once.
        others = [s.stop() for s in (self.grpc, self.metrics) if s is not None]
        await asyncio.gather(super().shutdown(sockets), *others)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn: a busy port is a clear error instead of uvicorn's
    ``sys.exit``, and port 0 (any free port) can be reported in the ready line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it a response written as header + body waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise MintError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _configure_logging(level: str) -> None:
    """Our logger reports skipped models at startup; give it a handler if nobody has."""
    logger = logging.getLogger("modelmint")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def run_server(repo: str | Path, host: str = "127.0.0.1", http_port: int = DEFAULT_HTTP_PORT,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               log_level: str = "warning", grpc_port: int | None = DEFAULT_GRPC_PORT,
               metrics_port: int | None = DEFAULT_METRICS_PORT, poll_interval_s: float = 0.0,
               isolation: Literal["thread", "process"] = "process") -> None:
    """Serve every model in ``repo`` until SIGINT/SIGTERM, then return normally.

    Every version runs in a worker process of its own (``isolation``, see :mod:`.worker`);
    the repository is re-read every ``poll_interval_s`` seconds (0: only when the repository
    API asks, ``POST /v2/repository/models/{m}/load``).

    HTTP and (unless ``grpc_port`` is None) gRPC share one data plane; Prometheus metrics are
    on ``metrics_port`` unless it is None; port 0 picks a free one.
    """
    _configure_logging(log_level)
    dataplane = DataPlane(repo, isolation=isolation)
    try:
        dataplane.load()  # before binding: a port that answers is a server that is ready
        dataplane.start_polling(poll_interval_s)
        server, sock = build_server(dataplane, host, http_port, grpc_port, max_request_bytes,
                                    log_level, metrics_port)
        try:
            with _StopOnSignals(server):
                server.run(sockets=[sock])
        finally:
            sock.close()
    finally:
        dataplane.close()


def build_server(dataplane: DataPlane, host: str = "127.0.0.1",
                 http_port: int = DEFAULT_HTTP_PORT, grpc_port: int | None = DEFAULT_GRPC_PORT,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 log_level: str = "warning", metrics_port: int | None = None,
                 ) -> tuple[ModelServer, socket.socket]:
    """The server and its bound HTTP socket; ``server.run(sockets=[sock])`` serves both
    protocols and the metrics (the gRPC and metrics ports are bound when they start). The
    caller closes the socket."""
    sock = bind_socket(host, http_port)
    port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    grpc = (None if grpc_port is None
            else GrpcServer(dataplane, host, grpc_port, max_request_bytes))
    app = create_app(dataplane, max_request_bytes)
    # asyncio's own loop even if uvloop is installed: grpc.aio is built for asyncio's loop.
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", loop="asyncio",
                            timeout_graceful_shutdown=10)
    metrics = (None if metrics_port is None
               else MetricsServer(dataplane.metrics, host, metrics_port))
    return ModelServer(config, url, len(dataplane.models), grpc, metrics), sock


class _StopOnSignals:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the
    previous handler (KeyboardInterrupt, or death by SIGTERM). These handlers are that previous
    handler: they stop the server, so a signal means "return normally" from run_server."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.saved: dict[int, Any] = {}

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.server.should_exit = True

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.saved = {sig: signal.signal(sig, self._stop) for sig in self._SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
