"""The HTTP/REST adapter: routes, body limits and error envelopes over the data plane, for
KServe V2 (``/v2/...``) and TensorFlow Serving's REST API (``/v1/models/...``, see
:mod:`.tfserving`).

Nothing here knows about models or tensors: requests are decoded by :mod:`.codec` (or
:mod:`.tfserving`), answered by :class:`.dataplane.DataPlane`, and every failure becomes
``{"error": "..."}`` (TF Serving's envelope too) with the status its
:class:`~modelmint.errors.MintError` carries. Unexpected exceptions are logged with their
traceback here and answered with a bare 500, so no internals leak to clients, and no message
names the repository's absolute path.

Who may call which route (Host allowlist, browser guards, access token) is
:class:`.auth.AccessControl`'s job, in front of every route. A body that trickles in slower
than ``read_timeout_s`` allows is answered 408 and the connection closed (the request head has
its own deadline, see :mod:`.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._repository import ModelRepository
from .._settings import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_READ_TIMEOUT_S
from ..errors import InvalidInput, MintError, ModelNotReady, PayloadTooLarge
from . import tfserving
from .auth import AccessControl, AccessPolicy, without_paths
from .codec import (
    HEADER_LENGTH,
    LOAD_PARAMETERS,
    UNLOAD_PARAMETERS,
    decode_repository_options,
    decode_request,
    encode_response,
    parse_header_length,
)
from .dataplane import DataPlane, parse_version

log = logging.getLogger("modelmint._serve")

Endpoint = Callable[[Request], Awaitable[Response]]


class BodyTimeout(InvalidInput):
    """The request body did not arrive within the server's read timeout."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


def error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _client_text(request: Request, message: str) -> str:
    """``message`` without the repository's absolute path (see :func:`.auth.without_paths`)."""
    return without_paths(message, getattr(request.app.state, "repository_roots", ()))


def _guard(endpoint: Endpoint) -> Endpoint:
    """Map every exception to the JSON envelope; only a bug may produce a 500."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except MintError as exc:
            if exc.http_status >= 500:
                log.error("%s %s: %s", request.method, request.url.path, exc)
            response = error_response(_client_text(request, exc.message), exc.http_status)
            if isinstance(exc, BodyTimeout):  # the rest of the body is not worth waiting for
                response.headers["Connection"] = "close"
            if exc.http_status == 503:
                # Every 503 says when to come back (1 s where the error has no estimate):
                # whole seconds on the wire, never 0: "0" would invite a tight retry loop.
                retry_after = getattr(exc, "retry_after", None) or 1.0
                response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
            return response
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is left to read it
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.url.path)
            return error_response("internal server error", 500)

    return guarded


def _version(request: Request) -> int | None:
    return parse_version(request.path_params.get("version"), "in the URL path")


async def read_body(request: Request, limit: int,
                    timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:
    """The request body, refusing more than ``limit`` bytes before buffering them all, and a
    body that takes longer than ``timeout_s`` to arrive (a slow client holds a connection and
    a buffer for as long as it likes otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(f"header Content-Length: {declared!r} is not an integer") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds this server's limit "
                                  f"of {limit} bytes")
    # Chunked bodies have no Content-Length: count while streaming.
    chunks: list[bytes] = []
    total = 0
    with anyio.move_on_after(timeout_s) as deadline:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds this server's limit of {limit} "
                                      "bytes")
            chunks.append(chunk)
    if deadline.cancelled_caught:
        raise BodyTimeout(f"request body not received within {timeout_s:g} s ({total} bytes "
                          "arrived)")
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    return body if encoding == "identity" else _decompress(body, encoding, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """tritonclient's ``request_compression_algorithm``; the limit applies after inflating
    too, or a small gzip bomb could allocate gigabytes."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise InvalidInput(f"header Content-Encoding: {encoding!r} is not supported; use gzip, "
                           "deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding} data ({exc})") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds this server's limit of "
                              f"{limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {encoding} data")
    return data


class _Handlers:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int,
                 read_timeout_s: float) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.max_request_bytes, self.read_timeout_s)

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.live() else 400)

    async def ready(self, request: Request) -> Response:
        # Triton answers "not ready" with 400; probes and tritonclient only test for 200.
        problem = self.dataplane.not_ready_reason()  # strict: every model it should serve
        if problem is not None:
            return error_response(problem, 400)
        return Response(status_code=200)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        model = request.path_params["model"]
        return JSONResponse(self.dataplane.model_metadata(model, _version(request)))

    async def model_ready(self, request: Request) -> Response:
        model = request.path_params["model"]
        version = _version(request)
        ready, why_not = self.dataplane.model_readiness(model, version)  # unknown: 404
        if ready:
            return Response(status_code=200)
        return error_response(_client_text(request, why_not), 400)

    async def infer(self, request: Request) -> Response:
        model = request.path_params["model"]
        version = _version(request)
        self.dataplane.model(model, version)  # 404/503 before reading a large body
        body = await self.body(request)
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        # JSON decoding of a 16 MiB body takes a while: keep it off the event loop.
        infer_request = await asyncio.to_thread(decode_request, body, header_length)
        result = await self.dataplane.infer(model, version, infer_request)
        payload, json_length = await asyncio.to_thread(encode_response, result,
                                                              infer_request)
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})

    # --- TensorFlow Serving REST: another wire format over the same data plane ---------------

    async def tf_predict(self, request: Request) -> Response:
        model = request.path_params["model"]
        version = _version(request)
        # 404/503 before reading a large body; the signature maps unnamed values to inputs.
        signature = self.dataplane.model_metadata(model, version)["inputs"]
        body = await self.body(request)
        infer_request, rows = await asyncio.to_thread(tfserving.decode_predict, body,
                                                             signature)
        result = await self.dataplane.infer(model, version, infer_request)
        return JSONResponse(tfserving.encode_predict(result, rows))

    async def stats(self, request: Request) -> Response:
        """Exact latency percentiles of recent requests (see :mod:`.metrics`)."""
        model = request.path_params["model"]
        version = _version(request)
        stats = self.dataplane.metrics.stats(model, None if version is None else str(version))
        if not stats["versions"]:  # unknown: 404; known but idle or not ready: no versions
            with contextlib.suppress(ModelNotReady):
                self.dataplane.model(model, version)
        return JSONResponse(stats)

    # --- the model repository extension: index, explicit load and unload -------------------

    async def repository_index(self, request: Request) -> Response:
        options = decode_repository_options(await self.body(request), frozenset())
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("field 'ready': expected true or false")
        index = self.dataplane.repository_index(ready)
        for entry in index:
            if "reason" in entry:
                entry["reason"] = _client_text(request, entry["reason"])
        return JSONResponse(index)

    async def repository_load(self, request: Request) -> Response:
        decode_repository_options(await self.body(request), LOAD_PARAMETERS)
        # Loading takes seconds (worker start, warm-up): a thread, never the event loop.
        await asyncio.to_thread(self.dataplane.repository_load,
                                       request.path_params["model"])
        return JSONResponse({})

    async def repository_unload(self, request: Request) -> Response:
        decode_repository_options(await self.body(request), UNLOAD_PARAMETERS)
        await asyncio.to_thread(self.dataplane.repository_unload,
                                       request.path_params["model"])
        return JSONResponse({})

    async def tf_status(self, request: Request) -> Response:
        loaded = self.dataplane.model(request.path_params["model"], _version(request))
        return JSONResponse(tfserving.model_status(loaded.version))


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in the same envelope as everything else."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        message = f"method {request.method} is not allowed for {request.url.path}"
    elif status == 404:
        message = f"no route for {request.method} {request.url.path}"
    else:
        message = exc.detail if isinstance(exc, HTTPException) else "internal server error"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(repo: str | Path | ModelRepository | DataPlane,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, *,
               policy: AccessPolicy | None = None,
               read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> Starlette:
    """The V2 HTTP app. Models load in the lifespan, so the socket is only served (and
    ``/v2/health/ready`` only answers 200) once they are loaded. A DataPlane passed in stays
    owned by the caller; one built here from a repository path is closed on shutdown.

    ``policy`` says who may call what (default: a loopback server without a token)."""
    owned = not isinstance(repo, DataPlane)
    dataplane = repo if isinstance(repo, DataPlane) else DataPlane(repo)
    h = _Handlers(dataplane, max_request_bytes, read_timeout_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not dataplane.ready():
            await asyncio.to_thread(dataplane.load)
        try:
            yield
        finally:
            if owned:
                dataplane.close()

    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", _guard(h.live), methods=["GET"]),
        Route("/v2/health/ready", _guard(h.ready), methods=["GET"]),
        Route("/v2", _guard(h.server_metadata), methods=["GET"]),
        Route(model, _guard(h.model_metadata), methods=["GET"]),
        Route(version, _guard(h.model_metadata), methods=["GET"]),
        Route(f"{model}/ready", _guard(h.model_ready), methods=["GET"]),
        Route(f"{version}/ready", _guard(h.model_ready), methods=["GET"]),
        Route(f"{model}/infer", _guard(h.infer), methods=["POST"]),
        Route(f"{version}/infer", _guard(h.infer), methods=["POST"]),
        Route(f"{model}/stats", _guard(h.stats), methods=["GET"]),
        Route(f"{version}/stats", _guard(h.stats), methods=["GET"]),
        Route("/v1/models/{model}:predict", _guard(h.tf_predict), methods=["POST"]),
        Route("/v1/models/{model}/versions/{version}:predict", _guard(h.tf_predict),
              methods=["POST"]),
        Route("/v1/models/{model}", _guard(h.tf_status), methods=["GET"]),
        Route("/v1/models/{model}/versions/{version}", _guard(h.tf_status), methods=["GET"]),
        Route("/v2/repository/index", _guard(h.repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guard(h.repository_load),
              methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guard(h.repository_unload),
              methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(AccessControl, policy=policy or AccessPolicy())],
                    exception_handlers={HTTPException: _http_exception})
    app.state.dataplane = dataplane
    root = dataplane.repo.root
    app.state.repository_roots = (root, root.absolute(), root.resolve())
    return app
