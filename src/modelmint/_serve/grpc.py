"""The KServe V2 gRPC adapter (``inference.GRPCInferenceService``) over the data plane.

Like the HTTP adapter, this only translates: a ``ModelInferRequest`` becomes the data plane's
:class:`~.types.InferRequest` (tensors built by the shared :mod:`.tensors` functions), the
:class:`~.types.InferResponse` goes back with every output in ``raw_output_contents`` (as
Triton does: tritonclient.grpc's ``as_numpy`` reads only that), and every
:class:`~modelmint.errors.MintError` becomes the gRPC status it names. Over gRPC, BYTES inputs
such as ``image`` carry raw bytes: base64 exists only because JSON cannot carry bytes.

The server runs on the caller's asyncio loop (uvicorn's, see :mod:`.server`), so one process
and one event loop serve both protocols from one :class:`~.dataplane.DataPlane`.

The access rules are HTTP's (:mod:`.auth`): the token travels in the ``authorization: Bearer``
metadata, the repository RPCs need it whenever a token is configured, the others only with
``require_token_for_inference``, and ServerLive/ServerReady/ModelReady never. Host and Origin
are not checked here: a browser cannot speak gRPC, so neither DNS rebinding nor a cross-site
form can reach this port. Requests arrive as bytes and are parsed here, so a message that is
not valid protobuf is INVALID_ARGUMENT like any other malformed request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from .._settings import DEFAULT_READ_TIMEOUT_S
from ..errors import InvalidInput, MintError
from .auth import TOKEN_SOURCE, AccessPolicy, RouteClass, without_paths
from .codec import LOAD_PARAMETERS, UNLOAD_PARAMETERS, check_repository_parameters
from .dataplane import DataPlane, parse_version
from .proto import grpc_predict_v2_pb2 as pb
from .tensors import (
    Where,
    check_count,
    check_shape,
    checked_dtype,
    numeric_tensor,
    object_array,
    tensor_from_raw,
    tensor_to_raw,
)
from .types import BYTES, InferInput, InferRequest, InferResponse, RequestedOutput, element_count

log = logging.getLogger("modelmint._serve")

# The InferTensorContents field that carries each datatype. FP16 has none: raw contents only.
_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
# Seconds in-flight RPCs get to finish once the server is told to stop.
STOP_GRACE = 5.0
SERVICE = "inference.GRPCInferenceService"
# Every RPC this service answers: its request message and its access class.
RPCS: dict[str, tuple[type[Message], RouteClass]] = {
    "ServerLive": (pb.ServerLiveRequest, "health"),
    "ServerReady": (pb.ServerReadyRequest, "health"),
    "ModelReady": (pb.ModelReadyRequest, "health"),
    "ServerMetadata": (pb.ServerMetadataRequest, "data"),
    "ModelMetadata": (pb.ModelMetadataRequest, "data"),
    "ModelInfer": (pb.ModelInferRequest, "data"),
    "RepositoryIndex": (pb.RepositoryIndexRequest, "management"),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, "management"),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, "management"),
}
NOT_READY_REASON = "reason"  # ModelReady's trailing metadata when ready is false
# Server-side connection limits. Keepalive pings find dead peers; idle connections are closed;
# a connection must finish its HTTP/2 handshake within the read timeout.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MAX_CONNECTION_IDLE_MS = 300_000


# --- wire <-> data plane types -------------------------------------------------------------

def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    """``ModelInferRequest`` -> :class:`InferRequest`; malformed fields raise InvalidInput."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"field 'raw_input_contents' has {len(raw)} entries but the request "
                           f"has {len(msg.inputs)} inputs; give one per input, in input order")
    inputs: list[InferInput] = []
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        where = Where(f"inputs[{i}]", name or None)
        if not name:
            raise InvalidInput(f"{where('.name')}: missing")
        checked_dtype(tensor.datatype, where.field(".datatype"))
        shape = check_shape(list(tensor.shape), where.field(".shape"))
        if raw:
            # Triton's rule: a request carries its data either all raw or all typed.
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where('.contents')}: must be unset when the request "
                                   "uses raw_input_contents")
            data = tensor_from_raw(raw[i], tensor.datatype, shape,
                                   Where(f"raw_input_contents[{i}]", name))
        else:
            data = _from_contents(tensor.contents, tensor.datatype, shape,
                                  where.field(".contents"))
        inputs.append(InferInput(name, tensor.datatype, shape, data))
    outputs: list[RequestedOutput] = []
    for i, out in enumerate(msg.outputs):
        if not out.name:
            raise InvalidInput(f"field 'outputs[{i}].name': missing")
        outputs.append(RequestedOutput(out.name, _parameters(out.parameters)))
    return InferRequest(id=msg.id or None, inputs=inputs, outputs=outputs,
                        parameters=_parameters(msg.parameters))


def _from_contents(contents: pb.InferTensorContents, datatype: str, shape: list[int],
                   where: Where) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"{where()}: {datatype} has no typed contents field; send it in "
                           "raw_input_contents")
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise InvalidInput(f"{where.field('.' + descriptor.name)()}: {datatype} data goes "
                               f"in '{field}'")
    values = list(getattr(contents, field))
    where = where.field(f".{field}")
    if datatype == BYTES:
        check_count(len(values), element_count(shape), shape, where)
        return object_array(values, shape)
    # The repeated field is already typed, but INT8/UINT16/... still need their range check.
    return numeric_tensor(values, datatype, shape, where)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """InferParameter oneofs -> plain values; an unset oneof counts as absent, as in JSON."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=response.model_name,
                                model_version=response.model_version, id=response.id or "")
    for out in response.outputs:
        msg.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
        msg.raw_output_contents.append(tensor_to_raw(out))
    return msg


def _tensor_metadata(specs: list[dict[str, Any]]
                     ) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                    shape=t["shape"]) for t in specs]


# --- the service ---------------------------------------------------------------------------

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["Servicer", Req, Any], Awaitable[Resp]]
RawHandler = Callable[["Servicer", bytes, Any], Awaitable[Resp]]


def _guard(handler: Handler[Req, Resp]) -> RawHandler[Resp]:
    """Check access, parse the request bytes, and map every exception to a status; only a bug
    may produce INTERNAL with no details."""
    name = handler.__name__
    request_type, route = RPCS[name]

    @functools.wraps(handler)
    async def guarded(self: Servicer, raw: bytes, context: Any) -> Resp:
        try:
            if self.policy.token_required(route) and not self.policy.authorized(
                    dict(context.invocation_metadata()).get("authorization")):
                code, message = grpc.StatusCode.UNAUTHENTICATED, (
                    f"{name} needs the server's access token: send the metadata "
                    f"'authorization: Bearer TOKEN' ({TOKEN_SOURCE})")
            else:
                try:
                    request = request_type.FromString(raw)
                except DecodeError:
                    kind = request_type.DESCRIPTOR.full_name
                    raise InvalidInput(f"the request is not a valid {kind} message") from None
                return await handler(self, request, context)
        except MintError as exc:
            if exc.grpc_code == "INTERNAL":
                log.error("gRPC %s: %s", name, exc)
            code = grpc.StatusCode[exc.grpc_code]
            message = without_paths(exc.message, self.repository_roots)
        except Exception:
            log.exception("unexpected error serving gRPC %s", name)
            code, message = grpc.StatusCode.INTERNAL, "internal server error"
        await context.abort(code, message)  # raises: ends the RPC with that status
        raise AssertionError("context.abort returned")

    return guarded


def _repository_name(name: str) -> None:
    if name:
        raise InvalidInput(f"field 'repository_name': {name!r}: this server has one repository; "
                           "leave the field empty")


class Servicer:
    """The Open Inference Protocol RPCs and the repository extension; grpc finds them by
    name (:func:`generic_handler`), Ray Serve through :mod:`.ray_serve`'s methods of the same
    names. ``context`` needs ``invocation_metadata()``, ``set_trailing_metadata()`` and
    ``abort()`` of a ``grpc.aio.ServicerContext``."""

    def __init__(self, dataplane: DataPlane, policy: AccessPolicy) -> None:
        self.dataplane = dataplane
        self.policy = policy
        root = dataplane.repo.root
        self.repository_roots = (root, root.absolute(), root.resolve())

    @_guard
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_guard
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_guard
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any
                         ) -> pb.ModelReadyResponse:
        # Unknown model or version: NOT_FOUND, as KServe's server and our HTTP 404 do.
        version = parse_version(request.version, "in field 'version'")
        ready, why_not = self.dataplane.model_readiness(request.name, version)
        if not ready:
            # The response has no field for it and gRPC drops the message of an OK status (an
            # error status would break clients that read ready=false): trailing metadata
            # carries it, escaped to the printable ASCII that metadata values allow.
            context.set_trailing_metadata(
                ((NOT_READY_REASON, without_paths(why_not, self.repository_roots).encode(
                    "unicode_escape").decode("ascii")),))
        return pb.ModelReadyResponse(ready=ready)

    @_guard
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any
                             ) -> pb.ServerMetadataResponse:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    @_guard
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any
                            ) -> pb.ModelMetadataResponse:
        version = parse_version(request.version, "in field 'version'")
        meta = self.dataplane.model_metadata(request.name, version)
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                        platform=meta["platform"],
                                        inputs=_tensor_metadata(meta["inputs"]),
                                        outputs=_tensor_metadata(meta["outputs"]))

    @_guard
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any
                         ) -> pb.ModelInferResponse:
        version = parse_version(request.model_version, "in field 'model_version'")
        # Unknown/unready model first, whatever else is wrong, exactly as over HTTP.
        self.dataplane.model(request.model_name, version)
        # Typed contents of a 16 MiB message are millions of Python values: off the loop.
        infer_request = await asyncio.to_thread(decode_request, request)
        result = await self.dataplane.infer(request.model_name, version, infer_request)
        return encode_response(result)

    @_guard
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any
                              ) -> pb.RepositoryIndexResponse:
        _repository_name(request.repository_name)
        entries = self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
            name=e.get("name", ""), version=e.get("version", ""), state=e.get("state", ""),
            reason=without_paths(e.get("reason", ""), self.repository_roots))
            for e in entries])

    @_guard
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any
                                  ) -> pb.RepositoryModelLoadResponse:
        _repository_name(request.repository_name)
        check_repository_parameters(request.parameters, LOAD_PARAMETERS, "field 'parameters'")
        if not request.model_name:
            raise InvalidInput("field 'model_name': missing")
        # Loading takes seconds (worker start, warm-up): a thread, never the event loop.
        await asyncio.to_thread(self.dataplane.repository_load, request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_guard
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        _repository_name(request.repository_name)
        check_repository_parameters(request.parameters, UNLOAD_PARAMETERS,
                                    "field 'parameters'")
        if not request.model_name:
            raise InvalidInput("field 'model_name': missing")
        await asyncio.to_thread(self.dataplane.repository_unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()


def generic_handler(servicer: Servicer) -> grpc.GenericRpcHandler:
    """Every RPC of :data:`RPCS`, taking the request as bytes (parsed in :func:`_guard`: grpc's
    own parsing answers a malformed message with INTERNAL)."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            response_serializer=lambda message: message.SerializeToString())
        for name in RPCS})


def add_v2_service(servicer: Any, server: Any) -> None:
    """Register every RPC of :data:`RPCS` on ``servicer`` with ``server``: the signature of
    grpc's generated ``add_..._to_server`` functions, which Ray Serve's gRPC ingress takes by
    import path (:mod:`.ray_serve`). Requests stay bytes until the adapter parses them, so a
    malformed one is INVALID_ARGUMENT there as here."""
    server.add_generic_rpc_handlers((generic_handler(servicer),))


class GrpcServer:
    """The gRPC endpoint of a model server, started and stopped on the running event loop."""

    def __init__(self, dataplane: DataPlane, host: str, port: int,
                 max_request_bytes: int, *, policy: AccessPolicy | None = None,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.dataplane = dataplane
        self.host = host
        self.requested_port = port
        self.max_request_bytes = max_request_bytes
        self.policy = policy or AccessPolicy()
        self.read_timeout_s = read_timeout_s
        self.port: int | None = None  # the bound port, once started (port 0 picks one)
        self._server: Any = None

    @property
    def address(self) -> str:
        """``host:port`` as gRPC clients take it (tritonclient.grpc's ``url``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self.port is not None else self.requested_port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            # Bigger messages fail with RESOURCE_EXHAUSTED before they are buffered whole.
            ("grpc.max_receive_message_length", self.max_request_bytes),
            # gRPC sets SO_REUSEPORT by default: a second server would silently share a busy
            # port (and get half the connections) instead of failing to start.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
            ("grpc.server_handshake_timeout_ms", max(1, round(self.read_timeout_s * 1000))),
        ])
        server.add_generic_rpc_handlers([generic_handler(Servicer(self.dataplane,
                                                                   self.policy))])
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpc's only signal for a failed bind
            raise MintError(f"cannot listen on {self.address} for gRPC: {exc}") from exc
        if not port:  # older grpc versions return 0 instead of raising
            raise MintError(f"cannot listen on {self.address} for gRPC")
        await server.start()
        self._server, self.port = server, port

    async def stop(self, grace: float | None = STOP_GRACE) -> None:
        """Refuse new RPCs, give in-flight ones ``grace`` seconds; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
