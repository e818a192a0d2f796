"""V2 HTTP/REST body <-> :mod:`modelmint._serve.types`, including the binary tensor extension.

Wire format (Triton's ``binary_tensor_data`` extension): when the request carries the header
``Inference-Header-Content-Length: n``, the first ``n`` body bytes are the JSON header and the
rest are raw tensors, in input order, for each input whose ``parameters.binary_data_size`` is set.
Raw numeric tensors are little-endian row-major; raw BYTES tensors are a sequence of
(4-byte little-endian length, bytes) elements. Responses use the same framing for outputs asked
for with ``binary_data: true`` (or request-level ``binary_data_output: true``).

Every malformed body raises :class:`InvalidInput` (HTTP 400) naming the offending field, so no
client input reaches the generic 500 handler.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .tensors import (
    Where,
    check_count,
    check_shape,
    checked_dtype,
    flatten,
    numeric_tensor,
    object_array,
    serialize_bytes,
    short,
    tensor_from_raw,
    tensor_to_raw,
)
from .types import (
    BYTES,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    element_count,
)

# Re-exported: the codec's public surface predates the shared tensor functions.
__all__ = ["HEADER_LENGTH", "LOAD_PARAMETERS", "UNLOAD_PARAMETERS", "check_repository_parameters",
           "decode_repository_options", "decode_request", "encode_response",
           "parse_header_length", "serialize_bytes"]

HEADER_LENGTH = "Inference-Header-Content-Length"
# JSON cannot carry raw bytes, so in JSON bodies these BYTES inputs hold base64 text. Binary
# bodies (and gRPC) carry the raw bytes, which is why this is decided here and not in the model.
BASE64_INPUTS: frozenset[str] = frozenset({"image", "audio"})  # "text" stays plain strings

# Plain ASCII digits: int() alone would also take "+5", "1_0", " 5" and non-ASCII digits.
_DECIMAL = re.compile(r"[0-9]{1,18}")
# Repository load/unload parameters this server understands (Triton's names). "config" and
# "file:..." (a model sent in the request) are refused: models come from the repository only.
LOAD_PARAMETERS: frozenset[str] = frozenset()
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})  # no ensembles here: nothing to unload


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """Validate the ``Inference-Header-Content-Length`` header against the body size."""
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value.strip()):
        raise InvalidInput(f"header {HEADER_LENGTH}: {short(value)} is not a non-negative "
                           "decimal integer")
    length = int(value.strip())
    if not 0 < length <= body_size:
        raise InvalidInput(f"header {HEADER_LENGTH}: {length} is outside the request body "
                           f"(body is {body_size} bytes)")
    return length


def check_repository_parameters(names: Collection[str], allowed: frozenset[str],
                                where: str) -> None:
    """Refuse a repository request parameter this server does not implement, by name."""
    unsupported = sorted(set(names) - allowed)
    if unsupported:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise InvalidInput(f"{where}: parameter {unsupported[0]!r} is not supported (accepted: "
                           f"{accepted}); models are loaded only as their repository folder "
                           "and config.json define them")


def decode_repository_options(body: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON body of a repository index/load/unload request: empty, or an object whose
    ``parameters`` (if any) are among ``allowed``."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"request body is not valid JSON ({short(exc)})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body: expected a JSON object")
    parameters = _object(doc.get("parameters"), "field 'parameters'")
    check_repository_parameters(parameters, allowed, "field 'parameters'")
    return doc


def decode_request(body: bytes, header_length: int | None = None, *,
                   base64_inputs: Collection[str] = BASE64_INPUTS) -> InferRequest:
    """Decode a V2 inference request body (JSON, or JSON + binary tensors)."""
    view = memoryview(body)
    json_part = view if header_length is None else view[:header_length]
    try:
        doc = json.loads(bytes(json_part))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise InvalidInput(f"request body is not valid JSON ({short(exc)})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body: expected a JSON object with an 'inputs' list")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("field 'id': expected a string")
    parameters = _object(doc.get("parameters"), "field 'parameters'")
    if "binary_data_output" in parameters and not isinstance(
            parameters["binary_data_output"], bool):
        raise InvalidInput("field 'parameters.binary_data_output': expected true or false")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("field 'inputs': missing or not a list")
    offset = header_length if header_length is not None else len(body)
    inputs = []
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, Where(f"inputs[{i}]"), view, offset, header_length,
                                       base64_inputs)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(f"request body has {len(body) - offset} bytes after the last binary "
                           "tensor (check the inputs' parameters.binary_data_size)")

    raw_outputs = doc.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidInput("field 'outputs': expected a list")
    outputs = [_decode_output(raw, Where(f"outputs[{i}]")) for i, raw in enumerate(raw_outputs)]
    return InferRequest(id=request_id, inputs=inputs, outputs=outputs, parameters=parameters)


def _decode_input(raw: Any, where: Where, body: memoryview, offset: int,
                  header_length: int | None, base64_inputs: Collection[str]
                  ) -> tuple[InferInput, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where()}: expected an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where('.name')}: missing or not a string")
    where = Where(where.path, name)
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where('.datatype')}: missing or not a string")
    checked_dtype(datatype, where.field(".datatype"))
    shape = check_shape(raw.get("shape"), where.field(".shape"))
    params = _object(raw.get("parameters"), where(".parameters"))

    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where('.parameters.binary_data_size')}: expected a "
                               "non-negative integer")
        if header_length is None:
            raise InvalidInput(f"{where('.parameters.binary_data_size')} is set but the "
                               f"request has no {HEADER_LENGTH} header")
        if "data" in raw:
            raise InvalidInput(f"{where()}: give either 'data' or binary data, not both")
        if offset + size > len(body):
            raise InvalidInput(f"{where('.parameters.binary_data_size')} is {size} but only "
                               f"{len(body) - offset} bytes of binary data remain")
        data = tensor_from_raw(body[offset:offset + size], datatype, shape, where)
        return InferInput(name, datatype, shape, data), offset + size

    if "data" not in raw:
        raise InvalidInput(f"{where('.data')}: missing (and no binary_data_size parameter)")
    if datatype == BYTES:
        data = _bytes_from_json(raw["data"], shape, where.field(".data"), name in base64_inputs)
    else:
        data = numeric_tensor(raw["data"], datatype, shape, where.field(".data"))
    return InferInput(name, datatype, shape, data), offset


def _decode_output(raw: Any, where: Where) -> RequestedOutput:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where()}: expected an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where('.name')}: missing or not a string")
    params = _object(raw.get("parameters"), where(".parameters"))
    if "binary_data" in params and not isinstance(params["binary_data"], bool):
        raise InvalidInput(f"{where('.parameters.binary_data')}: expected true or false")
    return RequestedOutput(name, params)


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return value


# --- JSON tensors -------------------------------------------------------------------------

def _bytes_from_json(data: Any, shape: list[int], where: Where, is_base64: bool) -> np.ndarray:
    flat = flatten(data, where)
    check_count(len(flat), element_count(shape), shape, where)
    items: list[bytes] = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidInput(f"{where(f'[{i}]')}: expected a string, got "
                               f"{short(item)}")
        if is_base64:
            try:
                items.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"{where(f'[{i}]')}: not valid base64 "
                                   f"({short(exc)})") from None
        else:
            items.append(item.encode("utf-8"))
    return object_array(items, shape)


# --- responses ----------------------------------------------------------------------------

def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """JSON (or JSON + binary) response body, and the JSON length when binary data follows."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    binary = {o.name: bool(o.parameters.get("binary_data", default_binary))
              for o in request.outputs}
    header: dict[str, Any] = {"model_name": response.model_name,
                              "model_version": response.model_version}
    if response.id is not None:
        header["id"] = response.id
    blobs: list[bytes] = []
    outputs = []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.shape)}
        if binary.get(out.name, default_binary):
            raw = tensor_to_raw(out)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _to_json(out)
        outputs.append(entry)
    header["outputs"] = outputs
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_json(out: InferOutput) -> list[Any]:
    if out.datatype == BYTES:
        # JSON has no raw bytes; our BYTES outputs are UTF-8 text (classification strings).
        # Anything else is replaced rather than failing the response: ask for binary_data.
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                for item in out.data.ravel()]
    values: list[Any] = out.data.ravel().tolist()
    return values
