"""The KServe V2 gRPC adapter (``inference.GRPCInferenceService``) over the data plane.

Like the HTTP adapter, this only translates: a ``ModelInferRequest`` becomes the data plane's
:class:`~.types.InferRequest` (tensors built by the shared :mod:`.tensors` functions), the
:class:`~.types.InferResponse` goes back with every output in ``raw_output_contents`` (as
Triton does: tritonclient.grpc's ``as_numpy`` reads only that), and every
:class:`~modelmint.errors.MintError` becomes the gRPC status it names. Over gRPC, BYTES inputs
such as ``image`` carry raw bytes: base64 exists only because JSON cannot carry bytes.

The server runs on the caller's asyncio loop (uvicorn's, see :mod:`.server`), so one process
and one event loop serve both protocols from one :class:`~.dataplane.DataPlane`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np

from ..errors import InvalidInput, MintError
from .dataplane import DataPlane, parse_version
from .proto import grpc_predict_v2_pb2 as pb
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc
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
Handler = Callable[["_Servicer", Req, Any], Awaitable[Resp]]


def _guard(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map every exception to a status; only a bug may produce INTERNAL with no details."""

    @functools.wraps(handler)
    async def guarded(self: _Servicer, request: Req, context: Any) -> Resp:
        try:
            return await handler(self, request, context)
        except MintError as exc:
            if exc.grpc_code == "INTERNAL":
                log.error("gRPC %s: %s", handler.__name__, exc)
            code, message = grpc.StatusCode[exc.grpc_code], exc.message
        except Exception:
            log.exception("unexpected error serving gRPC %s", handler.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal server error"
        await context.abort(code, message)  # raises: ends the RPC with that status
        raise AssertionError("context.abort returned")

    return guarded


class _Servicer:
    """The six Open Inference Protocol RPCs; grpc finds them by name."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

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
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, version))

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


class GrpcServer:
    """The gRPC endpoint of a model server, started and stopped on the running event loop."""

    def __init__(self, dataplane: DataPlane, host: str, port: int,
                 max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.host = host
        self.requested_port = port
        self.max_request_bytes = max_request_bytes
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
        ])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self.dataplane), server)
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
