"""Serving metrics: Prometheus series for scraping (``/metrics`` on its own port, 8002 by
default) and exact recent percentiles for people (``/v2/models/{m}/stats``, ``mint stats``).

Why both: a Prometheus histogram can only say which bucket a quantile falls in, so it is good
for dashboards and alerts across many servers; "what is p999 right now on this server" wants
the exact value, which the sliding window gives.

Every request is recorded in one place, :func:`observed` around ``DataPlane.infer``, so HTTP
(V2 and TF Serving REST) and gRPC are counted identically. Each server owns its own
:class:`Metrics` (its own ``CollectorRegistry``, never the process-global one): several servers
in one process (tests, benchmarks) would otherwise share or collide on series.

A version's series and window live as long as the version: unloading it removes them, so a
server that is hot-updated every few seconds for days keeps a constant number of series (and
``/metrics`` a constant size) instead of one more set of ~330 histogram buckets per update.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import MintError, NotFound
from .types import InferRequest, InferResponse

# Latency buckets: 0.5 ms * 2**(k/7), 0.5 ms .. ~10 s (100 boundaries). Adjacent boundaries
# differ by 10.4 %, so any quantile histogram_quantile() reads, p999 included, lies within one
# bucket of the truth: at most ~10 % off. Coarser default buckets (.005, .01, .025, ...) put
# p99 and p999 of a 20-40 ms model in the same bucket and make them unreadable.
LATENCY_BUCKETS: tuple[float, ...] = tuple(
    round(0.0005 * 2 ** (k / 7), 7) for k in range(101))
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
# The window behind /stats: the last WINDOW_S seconds, at most WINDOW_MAX requests per version
# (bounds memory and the sort per query; at 10k requests p999 is still the 10th slowest).
WINDOW_S = 60.0
WINDOW_MAX = 10_000
QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}
# Unloaded versions remembered so that a request answered just after its version was unloaded
# (it finished draining a moment before it was recorded) cannot bring their series back. Only
# the most recent ones: a late answer comes within moments of the unload.
FORGOTTEN_MAX = 64
_TIMINGS = ("queue_s", "compute_s")


class _Window:
    """Recent successful requests of one model version: (time, total, queue, compute)."""

    def __init__(self) -> None:
        self.rows: deque[tuple[float, float, float, float]] = deque(maxlen=WINDOW_MAX)
        self.failures: deque[float] = deque(maxlen=WINDOW_MAX)

    def trim(self, now: float) -> None:
        while self.rows and now - self.rows[0][0] > WINDOW_S:
            self.rows.popleft()
        while self.failures and now - self.failures[0] > WINDOW_S:
            self.failures.popleft()


def percentiles(values: np.ndarray) -> dict[str, float]:
    """Exact nearest-rank percentiles (the value at rank ceil(q*n)), max and count."""
    n = len(values)
    if n == 0:
        return {"count": 0}
    ordered = np.sort(values)
    out: dict[str, float] = {"count": n}
    for name, q in QUANTILES.items():
        out[name] = float(ordered[max(0, math.ceil(q * n) - 1)])
    out["max"] = float(ordered[-1])
    out["mean"] = float(ordered.mean())
    return out


class Metrics:
    """The Prometheus series and the /stats window of one server. Thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        reg = self.registry
        self.requests = Counter("modelmint_inference_requests", "Inference requests (successful "
                                "and failed)", labels, registry=reg)
        self.failures = Counter("modelmint_inference_failures", "Failed inference requests, by "
                                "error class (MintError subclass)", (*labels, "error"),
                                registry=reg)
        self.total = Histogram("modelmint_request_duration_seconds", "Total time in the server "
                               "per successful request (decoded request to result)", labels,
                               buckets=LATENCY_BUCKETS, registry=reg)
        self.queue = Histogram("modelmint_queue_duration_seconds", "Time a request waited for "
                               "an executor or batch", labels, buckets=LATENCY_BUCKETS,
                               registry=reg)
        self.compute = Histogram("modelmint_compute_duration_seconds", "Model execution time "
                                 "of the request's batch", labels, buckets=LATENCY_BUCKETS,
                                 registry=reg)
        self.batch = Histogram("modelmint_batch_size", "Rows in the batch a request was "
                               "executed in", labels, buckets=BATCH_BUCKETS, registry=reg)
        self.load = Gauge("modelmint_model_load_seconds", "How long loading the version took "
                          "(session creation, excluding warm-up)", labels, registry=reg)
        self.warmup = Gauge("modelmint_model_warmup_seconds", "How long replaying the "
                            "version's warm-up requests took", labels, registry=reg)
        self.versions = Gauge("modelmint_model_versions", "Model versions known to the server, "
                              "1 per version in its current state", (*labels, "state"),
                              registry=reg)
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._states: dict[tuple[str, str], str] = {}
        self._errors: dict[tuple[str, str], set[str]] = {}  # failure labels in use, by version
        self._forgotten: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- recording ---------------------------------------------------------------------------

    def observe_request(self, model: str, version: str, ok: bool, total_s: float,
                        timings: dict[str, float] | None = None, error: str = "") -> None:
        """One finished request. ``timings`` may hold ``queue_s``, ``compute_s`` and
        ``batch_size`` (filled by the execution path); failures only count. A request of a
        version unloaded meanwhile is not recorded: its series are gone with it."""
        key = (model, version)
        now = time.monotonic()
        # Under the lock: an unload removing this version's series cannot interleave with
        # their re-creation here.
        with self._lock:
            if key in self._forgotten:
                return
            self.requests.labels(model, version).inc()
            if not ok:
                label = error or "error"
                self.failures.labels(model, version, label).inc()
                self._errors.setdefault(key, set()).add(label)
                if model:
                    self._window(model, version).failures.append(now)
                return
            timings = timings or {}
            self.total.labels(model, version).observe(total_s)
            row = [now, total_s]
            for name, histogram in zip(_TIMINGS, (self.queue, self.compute), strict=True):
                value = timings.get(name)
                row.append(math.nan if value is None else value)
                if value is not None:
                    histogram.labels(model, version).observe(value)
            if "batch_size" in timings:
                self.batch.labels(model, version).observe(timings["batch_size"])
            self._window(model, version).rows.append((row[0], row[1], row[2], row[3]))

    def observe_load(self, model: str, version: str, load_s: float, warmup_s: float) -> None:
        with self._lock:
            if (model, version) in self._forgotten:
                return
            self.load.labels(model, version).set(load_s)
            self.warmup.labels(model, version).set(warmup_s)

    def set_state(self, model: str, version: str, state: str) -> None:
        """The lifecycle state of a version (e.g. loading, ready, failed); "unloaded" removes
        it and every series and recent request of that version, so the server exposes exactly
        the versions it still knows."""
        key = (model, version)
        with self._lock:
            old = self._states.pop(key, None)
            if old is not None:
                self.versions.remove(model, version, old)
            if state.lower() == "unloaded":
                self._forget(key)
                return
            self._forgotten.pop(key, None)  # loaded again
            self._states[key] = state
            self.versions.labels(model, version, state).set(1)

    def _forget(self, key: tuple[str, str]) -> None:
        """Remove every series and the window of one version (lock held)."""
        for metric in (self.requests, self.total, self.queue, self.compute, self.batch,
                       self.load, self.warmup):
            with contextlib.suppress(KeyError):  # never observed
                metric.remove(*key)
        for error in self._errors.pop(key, set()):
            with contextlib.suppress(KeyError):
                self.failures.remove(*key, error)
        self._windows.pop(key, None)
        self._forgotten[key] = None
        self._forgotten.move_to_end(key)
        while len(self._forgotten) > FORGOTTEN_MAX:
            self._forgotten.popitem(last=False)

    def _window(self, model: str, version: str) -> _Window:
        window = self._windows.get((model, version))
        if window is None:
            window = self._windows[(model, version)] = _Window()
        return window

    # --- reading -----------------------------------------------------------------------------

    def stats(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Exact latency percentiles (milliseconds) of ``model``'s recent requests, per version:
        the last :data:`WINDOW_S` seconds, at most :data:`WINDOW_MAX` requests each."""
        now = time.monotonic()
        with self._lock:
            keys = sorted((k for k in self._windows
                           if k[0] == model and version in (None, k[1])),
                          key=lambda k: int(k[1]) if k[1].isascii() and k[1].isdigit() else -1)
            snapshot = []
            for key in keys:
                window = self._windows[key]
                window.trim(now)
                if not window.rows and not window.failures:  # idle (or unloaded) version
                    del self._windows[key]
                    continue
                snapshot.append((key[1], np.array(window.rows, dtype=np.float64).reshape(-1, 4),
                                 len(window.failures)))
        versions = []
        for name, rows, failures in snapshot:
            entry: dict[str, Any] = {"version": name, "failures": failures,
                                     "total_ms": percentiles(rows[:, 1] * 1000)}
            for column, field in ((2, "queue_ms"), (3, "compute_ms")):
                values = rows[:, column][~np.isnan(rows[:, column])]
                if len(values):
                    entry[field] = percentiles(values * 1000)
            versions.append(entry)
        return {"model": model, "window_s": WINDOW_S, "window_max": WINDOW_MAX,
                "versions": versions}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_Infer = Callable[[Any, str, "int | None", InferRequest], Awaitable[InferResponse]]


def observed(infer: _Infer) -> _Infer:
    """Wrap ``DataPlane.infer``: time it and record it in ``self.metrics``, success or not.

    A failure is labelled with the version the request asked for, else the served one.
    Requests naming an unknown model or version are answered 404 by the transports before they
    get here, so they are not counted; one that gets here anyway (a version unloaded meanwhile)
    counts under empty labels: clients choose those names and must not create unbounded series.
    """

    @functools.wraps(infer)
    async def wrapper(self: Any, model: str, version: int | None,
                      request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        try:
            response = await infer(self, model, version, request)
        except BaseException as exc:
            name, served = "", ""
            if not isinstance(exc, NotFound):
                name = model
                served = "" if version is None else str(version)
                if not served:
                    with contextlib.suppress(MintError):
                        served = str(self.model(model).version)
            error = type(exc).__name__ if isinstance(exc, MintError | asyncio.CancelledError) \
                else "InternalError"
            self.metrics.observe_request(name, served, False, time.perf_counter() - started,
                                         error=error)
            raise
        self.metrics.observe_request(response.model_name, response.model_version, True,
                                     time.perf_counter() - started, response.timings)
        return response

    return wrapper


class MetricsServer:
    """``GET /metrics`` on its own port, served by a second uvicorn server on the model
    server's event loop (started and stopped like the gRPC server). A separate port keeps
    scrapes off the inference port and lets operators firewall them differently."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port or self.requested_port}/metrics"

    def app(self) -> Starlette:
        async def scrape(request: Request) -> Response:
            # generate_latest walks every series under the registry lock: off the event loop.
            body = await asyncio.to_thread(self.metrics.exposition)
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])

    async def start(self) -> None:
        from .server import bind_socket  # server.py imports this module

        sock = bind_socket(self.host, self.requested_port)
        config = uvicorn.Config(self.app(), lifespan="off", log_level="warning",
                                loop="asyncio", access_log=False, timeout_graceful_shutdown=5)
        config.load()
        server = uvicorn.Server(config)
        # startup()/shutdown() rather than serve(): serve() would run a second main loop and
        # install its own signal handlers; the model server's loop and signals drive this one.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server, self._sock, self.port = server, sock, sock.getsockname()[1]

    async def stop(self) -> None:
        """Safe to call twice."""
        server, sock = self._server, self._sock
        self._server = self._sock = None
        if server is not None:
            server.should_exit = True
            await server.shutdown(sockets=None)
        if sock is not None:
            sock.close()
