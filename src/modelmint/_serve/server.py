"""``run_server``: load the repository, bind, serve V2 over HTTP (uvicorn) and gRPC (grpc.aio)
from one process and one event loop, stop both cleanly on SIGINT/SIGTERM.

Who may call what is decided before anything is loaded (:func:`.auth.access_policy`): a server
bound off loopback without a token refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .._settings import (
    DEFAULT_DECODE_MEMORY,
    DEFAULT_DECODE_THREADS,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_METRICS_PORT,
    DEFAULT_READ_TIMEOUT_S,
)
from ..errors import InvalidInput, MintError
from .auth import AccessPolicy, access_policy
from .dataplane import DataPlane
from .decoding import started_pool
from .grpc import GrpcServer
from .http import create_app
from .listener import empty_accept_queue
from .metrics import MetricsServer

log = logging.getLogger("modelmint._serve")

# Idle keep-alive connections close after this many seconds (uvicorn's default, made explicit).
KEEP_ALIVE_S = 5
# The event loop's threads for work kept off it (request bodies decoded and responses encoded,
# over HTTP and gRPC; repository loads): a fixed number, started at once, so the server's
# threads do not grow with the busiest moment it has seen.
LOOP_THREADS = 4
# On shutdown, how long a new connection may take to send its first request.
FIRST_REQUEST_GRACE_S = 1.0


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
        pool = started_pool(LOOP_THREADS, "loop")
        asyncio.get_running_loop().set_default_executor(pool)
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
            pool.shutdown(wait=False)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            where = self.url if self.grpc is None else f"{self.url} and grpc://{self.grpc.address}"
            print(f"serving {self.model_count} model(s) on {where}", flush=True)
            if self.metrics is not None:  # a line of its own: the first one's format is kept
                print(f"metrics on {self.metrics.url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Connections the kernel accepted but we did not yet are requests on their way: take
        # them before the socket closes (closing would reset them).
        await asyncio.gather(*(empty_accept_queue(sock) for sock in sockets or []))
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


LOG_LEVELS = ("debug", "info", "warning", "error")


def _configure_logging(level: str) -> None:
    """Our logger reports skipped models at startup; give it a handler if nobody has."""
    if level.lower() not in LOG_LEVELS:
        raise InvalidInput(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    logger = logging.getLogger("modelmint")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def head_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head (request line and
    headers) has not arrived ``timeout_s`` after the connection opened or the previous response
    ended. uvicorn bounds the idle wait between requests only: without this a client that
    sends one header byte at a time holds its connection forever."""

    class HeadDeadlineProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _last_request = False  # the server is shutting down: close after this response

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is complete
                self._disarm()
                if self._last_request and self.cycle is not None:
                    self.cycle.keep_alive = False

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            # uvicorn closes a connection with no request at once; on a new connection the first
            # request is usually already on its way, and closing would reset it. Such a
            # connection gets its first request answered (then closes), or closes when
            # FIRST_REQUEST_GRACE_S pass without one. A connection that has served requests is
            # idle keep-alive: closing it is what clients expect.
            if self.cycle is None and not self.transport.is_closing():
                self._last_request = True
                self._arm(min(timeout_s, FIRST_REQUEST_GRACE_S))
            else:
                super().shutdown()

        def _arm(self, after_s: float = timeout_s) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(after_s, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


def run_server(repo: str | Path, host: str = "127.0.0.1", http_port: int = DEFAULT_HTTP_PORT,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               log_level: str = "warning", grpc_port: int | None = DEFAULT_GRPC_PORT,
               metrics_port: int | None = DEFAULT_METRICS_PORT, poll_interval_s: float = 0.0,
               isolation: Literal["thread", "process"] = "process", *,
               token_file: Path | None = None, require_token_for_inference: bool = False,
               insecure_no_token: bool = False, allowed_hosts: Sequence[str] = (),
               read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
               decode_memory: int = DEFAULT_DECODE_MEMORY,
               decode_threads: int = DEFAULT_DECODE_THREADS) -> None:
    """Serve every model in ``repo`` until SIGINT/SIGTERM, then return normally.

    Every version runs in a worker process of its own (``isolation``, see :mod:`.worker`);
    the repository is re-read every ``poll_interval_s`` seconds (0: only when the repository
    API asks, ``POST /v2/repository/models/{m}/load``).

    HTTP and (unless ``grpc_port`` is None) gRPC share one data plane; Prometheus metrics are
    on ``metrics_port`` unless it is None; port 0 picks a free one.

    The access token, Host allowlist and read timeout are described in :mod:`.auth` and
    docs/security.md; a bind off loopback without ``token_file`` raises MintError unless
    ``insecure_no_token``.
    """
    _configure_logging(log_level)
    policy, created = access_policy(
        host, token_file, require_token_for_inference=require_token_for_inference,
        allowed_hosts=allowed_hosts, insecure_no_token=insecure_no_token)
    if created:  # shown once; afterwards it is only in the 0600 file
        print(f"access token (also in {token_file}): {policy.token}", file=sys.stderr,
              flush=True)
    if policy.token is None and insecure_no_token:
        log.warning("serving on %s without an access token: anyone who can reach it may load "
                    "and unload models", host)
    dataplane = DataPlane(repo, isolation=isolation, decode_memory=decode_memory,
                          decode_threads=decode_threads)
    try:
        dataplane.load()  # before binding: a port that answers is a server that is ready
        dataplane.start_polling(poll_interval_s)
        server, sock = build_server(dataplane, host, http_port, grpc_port, max_request_bytes,
                                    log_level, metrics_port, policy=policy,
                                    read_timeout_s=read_timeout_s)
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
                 log_level: str = "warning", metrics_port: int | None = None, *,
                 policy: AccessPolicy | None = None,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 ) -> tuple[ModelServer, socket.socket]:
    """The server and its bound HTTP socket; ``server.run(sockets=[sock])`` serves both
    protocols and the metrics (the gRPC and metrics ports are bound when they start). The
    caller closes the socket. ``policy`` (default: loopback, no token) applies to HTTP and
    gRPC alike; the metrics port is always open."""
    policy = policy or AccessPolicy()
    sock = bind_socket(host, http_port)
    port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    grpc = (None if grpc_port is None
            else GrpcServer(dataplane, host, grpc_port, max_request_bytes, policy=policy,
                            read_timeout_s=read_timeout_s))
    app = create_app(dataplane, max_request_bytes, policy=policy, read_timeout_s=read_timeout_s)
    # asyncio's own loop even if uvloop is installed: grpc.aio is built for asyncio's loop.
    # No access log: a line per request would cost the request path more than it serves.
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            loop="asyncio",
                            http=head_deadline_protocol(read_timeout_s),
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=10)
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
