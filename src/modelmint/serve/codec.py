"""V2 HTTP/REST body <-> :mod:`modelmint.serve.types`, including the binary tensor extension.

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
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
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

HEADER_LENGTH = "Inference-Header-Content-Length"
# JSON cannot carry raw bytes, so in JSON bodies these BYTES inputs hold base64 text. Binary
# bodies (and gRPC) carry the raw bytes, which is why this is decided here and not in the model.
BASE64_INPUTS: frozenset[str] = frozenset({"image"})

_LEN = struct.Struct("<I")
MAX_RANK = 32
MAX_ELEMENTS = 2**48  # far above any body we accept, far below NumPy's intp limit


@dataclass(frozen=True)
class _Where:
    """Names the offending field in error messages: ``field 'inputs[0].shape' of input 'x'``."""

    path: str
    name: str | None = None

    def __call__(self, sub: str = "") -> str:
        text = f"field '{self.path}{sub}'"
        return text if self.name is None else f"{text} of input {self.name!r}"


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """Validate the ``Inference-Header-Content-Length`` header against the body size."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise InvalidInput(f"header {HEADER_LENGTH}: {value!r} is not an integer") from None
    if not 0 < length <= body_size:
        raise InvalidInput(f"header {HEADER_LENGTH}: {length} is outside the request body "
                           f"(body is {body_size} bytes)")
    return length


def decode_request(body: bytes, header_length: int | None = None, *,
                   base64_inputs: Collection[str] = BASE64_INPUTS) -> InferRequest:
    """Decode a V2 inference request body (JSON, or JSON + binary tensors)."""
    view = memoryview(body)
    json_part = view if header_length is None else view[:header_length]
    try:
        doc = json.loads(bytes(json_part))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise InvalidInput(f"request body is not valid JSON ({_short(exc)})") from None
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
        tensor, offset = _decode_input(raw, _Where(f"inputs[{i}]"), view, offset, header_length,
                                       base64_inputs)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(f"request body has {len(body) - offset} bytes after the last binary "
                           "tensor (check the inputs' parameters.binary_data_size)")

    raw_outputs = doc.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidInput("field 'outputs': expected a list")
    outputs = [_decode_output(raw, _Where(f"outputs[{i}]")) for i, raw in enumerate(raw_outputs)]
    return InferRequest(id=request_id, inputs=inputs, outputs=outputs, parameters=parameters)


def _decode_input(raw: Any, where: _Where, body: memoryview, offset: int,
                  header_length: int | None, base64_inputs: Collection[str]
                  ) -> tuple[InferInput, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where()}: expected an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where('.name')}: missing or not a string")
    where = _Where(where.path, name)
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where('.datatype')}: missing or not a string")
    try:
        dtype = numpy_dtype(datatype)
    except InvalidInput as exc:
        raise InvalidInput(f"{where('.datatype')}: {exc}") from None
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where('.shape')}: expected a list of non-negative integers, "
                           f"got {_short(shape)}")
    # NumPy cannot even describe these (it raises ValueError deep inside), so refuse them here.
    sized = element_count([d for d in shape if d]) if shape else 1
    if len(shape) > MAX_RANK or sized > MAX_ELEMENTS:
        raise InvalidInput(f"{where('.shape')}: {_short(shape)} is too large (at most "
                           f"{MAX_RANK} dimensions and {MAX_ELEMENTS} elements)")
    params = _object(raw.get("parameters"), where(".parameters"))
    count = element_count(shape)

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
        blob = body[offset:offset + size]
        data = _from_binary(blob, datatype, dtype, shape, count, where)
        return InferInput(name, datatype, list(shape), data), offset + size

    if "data" not in raw:
        raise InvalidInput(f"{where('.data')}: missing (and no binary_data_size parameter)")
    if datatype == BYTES:
        data = _bytes_from_json(raw["data"], shape, count, where, name in base64_inputs)
    else:
        data = _numeric_from_json(raw["data"], datatype, dtype, shape, count, where)
    return InferInput(name, datatype, list(shape), data), offset


def _decode_output(raw: Any, where: _Where) -> RequestedOutput:
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


# --- binary tensors ------------------------------------------------------------------------

def _from_binary(blob: memoryview, datatype: str, dtype: np.dtype[Any], shape: list[int],
                 count: int, where: _Where) -> np.ndarray:
    if datatype == BYTES:
        items = deserialize_bytes(blob, count, where())
        return _object_array(items, shape)
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise InvalidInput(f"{where('.parameters.binary_data_size')} is {len(blob)} bytes "
                           f"but shape {shape} of {datatype} needs {expected}")
    # Copy: the body slice is read-only and may be unaligned for the element size.
    return np.frombuffer(blob, dtype=dtype).reshape(shape).copy()


def deserialize_bytes(blob: memoryview | bytes, count: int, where: str) -> list[bytes]:
    """Length-prefixed BYTES elements; exactly ``count`` of them must fill ``blob``."""
    view = memoryview(blob)
    items: list[bytes] = []
    pos = 0
    while pos < len(view):
        if len(items) == count:
            raise InvalidInput(f"{where}: binary BYTES data holds more than the "
                               f"{count} elements its shape says")
        if pos + 4 > len(view):
            raise InvalidInput(f"{where}: binary BYTES element {len(items)} has a "
                               "truncated 4-byte length prefix")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidInput(f"{where}: binary BYTES element {len(items)} claims "
                               f"{size} bytes but only {len(view) - pos} remain")
        items.append(bytes(view[pos:pos + size]))
        pos += size
    if len(items) != count:
        raise InvalidInput(f"{where}: binary BYTES data holds {len(items)} elements, "
                           f"shape says {count}")
    return items


def serialize_bytes(data: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in data.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _object_array(items: list[bytes], shape: list[int]) -> np.ndarray:
    arr = np.empty(len(items), dtype=np.object_)
    arr[:] = items  # element-wise: np.array(items) would make a fixed-width 'S' array
    return arr.reshape(shape)


# --- JSON tensors -------------------------------------------------------------------------

def _flatten(data: Any, where: _Where) -> list[Any]:
    """Row-major flatten of arbitrarily nested lists, without recursion (deep input is cheap)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{where('.data')}: expected a list, got {_short(data)}")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_from_json(data: Any, shape: list[int], count: int, where: _Where,
                     is_base64: bool) -> np.ndarray:
    flat = _flatten(data, where)
    _check_count(len(flat), count, shape, where)
    items: list[bytes] = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidInput(f"{where(f'.data[{i}]')}: expected a string, got "
                               f"{_short(item)}")
        if is_base64:
            try:
                items.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"{where(f'.data[{i}]')}: not valid base64 "
                                   f"({_short(exc)})") from None
        else:
            items.append(item.encode("utf-8"))
    return _object_array(items, shape)


def _numeric_from_json(data: Any, datatype: str, dtype: np.dtype[Any], shape: list[int],
                       count: int, where: _Where) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{where('.data')}: expected a list, got {_short(data)}")
    # Fast path: NumPy infers a numeric array from a regular nested list in C; a ragged,
    # mixed-type or string-holding list falls back to the slow, element-naming check.
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        arr = np.array(None)
    if arr.dtype.kind not in "biuf":
        flat = _flatten(data, where)
        for i, item in enumerate(flat):
            if (isinstance(item, bool) and datatype != "BOOL") or not isinstance(
                    item, (bool, int, float)):
                raise InvalidInput(f"{where(f'.data[{i}]')}: {datatype} needs "
                                   f"{_kind(datatype)}, got {_short(item)}")
        try:
            arr = np.array(flat)
        except OverflowError:
            arr = np.array(flat, dtype=np.object_)
    arr = arr.reshape(-1)
    _check_count(arr.size, count, shape, where)
    if arr.size == 0:
        return np.empty(shape, dtype)
    if datatype == "BOOL":
        ok = arr.dtype.kind == "b"
    elif dtype.kind in "iu":
        ok = arr.dtype.kind in "iuO"
        if ok:
            info = np.iinfo(dtype)
            values = arr.tolist() if arr.dtype.kind == "O" else [arr.min(), arr.max()]
            low, high = int(min(values)), int(max(values))
            if low < info.min or high > info.max:
                raise InvalidInput(f"{where('.data')}: values {low}..{high} are out of "
                                   f"range for {datatype}")
    else:
        ok = arr.dtype.kind in "iuf"
    if not ok:
        raise InvalidInput(f"{where('.data')}: {datatype} needs {_kind(datatype)}")
    with np.errstate(over="ignore"):  # e.g. 1e300 as FP32 is inf, as in Triton's cast
        return arr.astype(dtype).reshape(shape)


def _kind(datatype: str) -> str:
    if datatype == "BOOL":
        return "true/false values"
    if datatype.startswith(("INT", "UINT")):
        return "integers"
    return "numbers"


def _check_count(actual: int, expected: int, shape: list[int], where: _Where) -> None:
    if actual != expected:
        raise InvalidInput(f"{where('.data')}: has {actual} elements but shape {shape} "
                           f"needs {expected}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
            raw = _to_binary(out)
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


def _to_binary(out: InferOutput) -> bytes:
    if out.datatype == BYTES:
        return serialize_bytes(out.data)
    return np.ascontiguousarray(out.data, dtype=numpy_dtype(out.datatype)).tobytes()


def _to_json(out: InferOutput) -> list[Any]:
    if out.datatype == BYTES:
        # JSON has no raw bytes; our BYTES outputs are UTF-8 text (classification strings).
        # Anything else is replaced rather than failing the response: ask for binary_data.
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                for item in out.data.ravel()]
    values: list[Any] = out.data.ravel().tolist()
    return values
