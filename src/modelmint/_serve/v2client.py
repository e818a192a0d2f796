"""The client side of KServe V2, said once: request objects, their wire bodies, response reading.

Requests are the same :class:`~.types.InferRequest` objects the server's data plane answers, so
one request is sent over HTTP (:class:`V2Client`) or handed to an in-process
:class:`~.dataplane.DataPlane` unchanged, and both answers are read by the same functions.

Wire shapes (those :mod:`.codec` decodes):

* JSON: BYTES elements are base64 text for the encoded-file inputs (``image``, ``audio``: the
  codec's ``BASE64_INPUTS``) and plain UTF-8 strings otherwise (``text``); numbers are a flat
  row-major list.
* Binary (Triton's ``binary_tensor_data``): the JSON header, then each input's raw bytes, with
  the header's length in ``Inference-Header-Content-Length``; the response comes back the same way.
* Classification: the output parameter ``{"classification": k}`` on ``probabilities`` answers a
  BYTES ``[N, k]`` table of ``b"score:index:label"``, read here into ``(score, index, label)``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from .._tensor_names import PROBABILITIES, TENSOR_INPUT
from ..errors import (
    DeadlineExceeded,
    InvalidInput,
    MintError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    ServerBusy,
    Unauthorized,
)
from .codec import BASE64_INPUTS, HEADER_LENGTH
from .tensors import (
    Where,
    check_count,
    check_shape,
    flatten,
    numeric_tensor,
    object_array,
    serialize_bytes,
    tensor_from_raw,
)
from .types import (
    BYTES,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    element_count,
    numpy_dtype,
)

TOKEN_VARIABLE = "MODELMINT_TOKEN"  # the server's token, for clients that need one

__all__ = ["Classification", "V2Client", "bytes_request", "classifications", "decode_response",
           "encode_request", "encoded_input", "output_array", "request_json", "tensor_request",
           "warmup_request"]

Classification = tuple[float, int, str]  # (score, class index, label)

_ERRORS: dict[int, type[MintError]] = {
    cls.http_status: cls for cls in (InvalidInput, Unauthorized, NotFound, PayloadTooLarge,
                                     ModelNotReady, DeadlineExceeded)}


# --- request objects -------------------------------------------------------------------------

def bytes_request(name: str, items: Sequence[bytes], *,
                  classification: int | None = None) -> InferRequest:
    """A BYTES ``[N]`` input ``name`` (encoded files or UTF-8 texts); with ``classification``,
    the top-k labels of ``probabilities`` are asked for instead of the probabilities."""
    if not items:
        raise InvalidInput(f"input {name!r}: no elements to send")
    for i, item in enumerate(items):
        if not isinstance(item, bytes):
            raise InvalidInput(f"input {name!r}[{i}]: expected bytes, got {type(item).__name__}")
    tensor = InferInput(name, BYTES, [len(items)], object_array(list(items), [len(items)]))
    return InferRequest(inputs=[tensor], outputs=_outputs(classification, ()))


def tensor_request(array: np.ndarray, *, name: str = TENSOR_INPUT,
                   classification: int | None = None,
                   outputs: Sequence[str] = ()) -> InferRequest:
    """An FP32 input (the batch axis included); numeric arrays of other types are converted.
    ``outputs`` names the outputs wanted (none: the model's default)."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"input {name!r}: an FP32 tensor needs numbers, got a {array.dtype} "
                           "array")
    data = np.ascontiguousarray(array, dtype=np.float32)
    tensor = InferInput(name, "FP32", list(data.shape), data)
    return InferRequest(inputs=[tensor], outputs=_outputs(classification, outputs))


def _outputs(classification: int | None, names: Sequence[str]) -> list[RequestedOutput]:
    wanted = [RequestedOutput(n) for n in names if n != PROBABILITIES or classification is None]
    if classification is not None:
        if isinstance(classification, bool) or not isinstance(classification, int) or (
                classification < 1):
            raise InvalidInput(f"classification must be an integer >= 1, got {classification!r}")
        wanted.append(RequestedOutput(PROBABILITIES, {"classification": classification}))
    return wanted


def warmup_request(name: str, payload: bytes | Sequence[bytes] | np.ndarray, *,
                   classification: int | None = None) -> dict[str, Any]:
    """The JSON document of a recorded warm-up request (``warmup/request-NNN.json``, replayed
    by the server before a version takes traffic): one encoded payload or several for the raw
    input ``name``, or an FP32 batch (batch axis included) for a tensor input."""
    if isinstance(payload, np.ndarray):
        request = tensor_request(payload, name=name, classification=classification)
    else:
        items = [payload] if isinstance(payload, bytes) else list(payload)
        request = bytes_request(name, items, classification=classification)
    return request_json(request)


# --- request bodies --------------------------------------------------------------------------

def request_json(request: InferRequest) -> dict[str, Any]:
    """The V2 JSON document of ``request`` (every tensor inline)."""
    doc = _header(request)
    for entry, tensor in zip(doc["inputs"], request.inputs, strict=True):
        entry["data"] = _json_data(tensor)
    return doc


def encode_request(request: InferRequest, *, binary: bool = False) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and headers of ``request``: JSON, or with ``binary`` every tensor raw after
    the JSON header, and the outputs asked back raw too."""
    if not binary:
        body = json.dumps(request_json(request), separators=(",", ":")).encode("utf-8")
        return body, {"Content-Type": "application/json"}
    doc = _header(request)
    doc.setdefault("parameters", {})["binary_data_output"] = True
    blobs = [_raw(tensor) for tensor in request.inputs]
    for entry, blob in zip(doc["inputs"], blobs, strict=True):
        entry["parameters"] = {"binary_data_size": len(blob)}
    head = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}


def _header(request: InferRequest) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if request.id is not None:
        doc["id"] = request.id
    doc["inputs"] = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                     for t in request.inputs]
    if request.outputs:
        doc["outputs"] = [{"name": o.name, **({"parameters": dict(o.parameters)}
                                               if o.parameters else {})}
                          for o in request.outputs]
    if request.parameters:
        doc["parameters"] = dict(request.parameters)
    return doc


def _json_data(tensor: InferInput) -> list[Any]:
    if tensor.datatype != BYTES:
        values: list[Any] = np.asarray(tensor.data, dtype=numpy_dtype(tensor.datatype)
                                       ).ravel().tolist()
        return values
    items: list[bytes] = list(tensor.data.ravel())
    if tensor.name in BASE64_INPUTS:  # JSON cannot carry raw bytes
        return [base64.b64encode(item).decode("ascii") for item in items]
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {tensor.name!r}: JSON carries it as text, but an element is "
                           f"not UTF-8 ({exc})") from None


def _raw(tensor: InferInput) -> bytes:
    if tensor.datatype == BYTES:
        return serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=numpy_dtype(tensor.datatype)).tobytes()


# --- responses -------------------------------------------------------------------------------

def decode_response(body: bytes, header_length: int | None = None) -> InferResponse:
    """An HTTP infer response body (JSON, or JSON + raw tensors when ``header_length`` — the
    ``Inference-Header-Content-Length`` header — is given) as an :class:`InferResponse`."""
    try:
        return _decode_response(memoryview(body), header_length)
    except (InvalidInput, ValueError, TypeError, KeyError) as exc:
        raise MintError(f"unexpected V2 response: {exc}") from None


def _decode_response(body: memoryview, header_length: int | None) -> InferResponse:
    end = len(body) if header_length is None else header_length
    doc = json.loads(bytes(body[:end]))
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise ValueError("expected a JSON object with an 'outputs' list")
    offset = end
    outputs = []
    for i, entry in enumerate(doc["outputs"]):
        where = Where(f"outputs[{i}]")
        name, datatype = str(entry["name"]), str(entry["datatype"])
        shape = check_shape(entry["shape"], where.field(".shape"))
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = tensor_from_raw(body[offset:offset + int(size)], datatype, shape, where)
            offset += int(size)
        elif datatype == BYTES:  # text in JSON: the classification strings
            items = [str(x).encode("utf-8") for x in flatten(entry["data"], where.field(".data"))]
            check_count(len(items), element_count(shape), shape, where.field(".data"))
            data = object_array(items, shape)
        else:
            data = numeric_tensor(entry["data"], datatype, shape, where.field(".data"))
        outputs.append(InferOutput(name, datatype, shape, data))
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the last binary output")
    request_id = doc.get("id")
    return InferResponse(str(doc.get("model_name", "")), str(doc.get("model_version", "")),
                         None if request_id is None else str(request_id), outputs)


def output_array(response: InferResponse, name: str) -> np.ndarray:
    """Output ``name``'s tensor (BYTES: an object array of ``bytes``)."""
    try:
        return response.output(name).data
    except KeyError:
        present = [o.name for o in response.outputs]
        raise MintError(f"the response has no output {name!r} (it has {present})") from None


def classifications(response: InferResponse,
                    name: str = PROBABILITIES) -> list[list[Classification]]:
    """Each row's top-k ``(score, index, label)`` from a classification output."""
    table = output_array(response, name)
    if table.ndim != 2 or table.dtype != np.object_:
        raise MintError(f"output {name!r} is not a classification table (BYTES [N, k]); ask for "
                        "it with the 'classification' parameter")
    return [[_classification(item) for item in row] for row in table]


def _classification(item: bytes | str) -> Classification:
    text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    try:
        score, index, *label = text.split(":", 2)
        return float(score), int(index), label[0] if label else index
    except ValueError:
        raise MintError(f"classification element {text!r}: expected 'score:index:label'"
                        ) from None


def encoded_input(metadata: dict[str, Any]) -> str | None:
    """The BYTES (encoded file or text) input in a model's V2 metadata; None when the model
    takes tensors only."""
    for tensor in metadata.get("inputs", []):
        if isinstance(tensor, dict) and tensor.get("datatype") == BYTES:
            return str(tensor["name"])
    return None


# --- HTTP transport --------------------------------------------------------------------------

class V2Client:
    """Synchronous V2 over HTTP (httpx). Server errors raise the :mod:`~modelmint.errors` class
    of their status with the server's message; an unreachable server raises :class:`MintError`,
    one that does not answer within ``timeout`` seconds :class:`DeadlineExceeded`.
    ``token`` (default: the ``MODELMINT_TOKEN`` environment variable) goes with every request as
    ``Authorization: Bearer``, for a server that requires it (``mint serve --token-file``)."""

    def __init__(self, url: str, *, timeout: float = 120.0, token: str | None = None) -> None:
        base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        token = token or os.environ.get(TOKEN_VARIABLE) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base, timeout=timeout, headers=headers)

    def infer(self, model: str, request: InferRequest, *, version: int | None = None,
              binary: bool = False) -> InferResponse:
        body, headers = encode_request(request, binary=binary)
        reply = self._send("POST", self._path(model, version) + "/infer", body, headers)
        length = reply.headers.get(HEADER_LENGTH, "")
        known = length.isascii() and length.isdigit()
        return decode_response(reply.content, int(length) if known else None)

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        """``GET /v2/models/{model}[/versions/{v}]``: name, versions, inputs, outputs."""
        reply = self._send("GET", self._path(model, version), None, {})
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise MintError(f"unexpected model metadata from {self.http.base_url}: "
                            f"{reply.text[:200]!r}")
        return doc

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> V2Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def _path(model: str, version: int | None) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        return path if version is None else f"{path}/versions/{version}"

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> httpx.Response:
        try:
            reply = self.http.request(method, path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"no answer from {self.http.base_url} within "
                                   f"{self.http.timeout.read}s: {exc}") from exc
        except httpx.HTTPError as exc:
            raise MintError(f"cannot reach the server at {self.http.base_url}: {exc}") from exc
        if reply.status_code == 200:
            return reply
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        message = str(doc.get("error") if isinstance(doc, dict) and doc.get("error")
                      else f"HTTP {reply.status_code}: {reply.text[:200]}")
        retry_after = reply.headers.get("retry-after")
        if reply.status_code == ServerBusy.http_status and retry_after is not None:
            seconds = retry_after.isascii() and retry_after.isdigit()
            raise ServerBusy(message, float(retry_after) if seconds else 1.0)
        raise _ERRORS.get(reply.status_code, MintError)(message)
