"""TensorFlow Serving REST bodies <-> :mod:`modelmint._serve.types` (the ``:predict`` API).

Only the wire format lives here; :mod:`.http` routes ``/v1/models/...`` through the same data
plane as V2, so validation, batching limits and error messages are the V2 ones.

Request forms (https://www.tensorflow.org/tfx/serving/api_rest):

* row: ``{"instances": [...]}``, one entry per batch item: a value for the model's default
  input (a nested list of numbers, or ``{"b64": ...}`` for encoded bytes) or an object naming
  its inputs (``{"image": {"b64": ...}}``, ``{"input": [...]}``); the batch axis is implied.
* columnar: ``{"inputs": ...}``, whole tensors including the batch axis: a value for the
  default input or an object of named tensors (``{"image": [{"b64": ...}, ...]}``).

Unnamed values go to the signature input of their kind: ``{"b64": ...}`` and strings to the
model's BYTES input, numbers to its numeric one. Replies are ``{"predictions": ...}`` (row) or
``{"outputs": ...}`` (columnar), both per batch item first, like TF Serving. Every declared
output is returned: one output unnamed; several (a detector's boxes, scores, classes, count) as
an object per batch item (row) or an object of whole tensors (columnar), as TF Serving answers
for multi-output signatures.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .tensors import Where, check_shape, numeric_tensor, object_array, short
from .types import BYTES, InferInput, InferOutput, InferRequest, InferResponse

DEFAULT_SIGNATURE = "serving_default"
B64 = "b64"


def decode_predict(body: bytes, signature: list[dict[str, Any]]) -> tuple[InferRequest, bool]:
    """A ``:predict`` body as an InferRequest, and whether it used the row (instances) form.

    ``signature`` is the model's V2 input metadata: it says which input takes unnamed values
    and each named input's datatype (JSON numbers alone do not say FP32 or INT64).
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise InvalidInput(f"request body is not valid JSON ({short(exc)})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body: expected a JSON object with 'instances' or 'inputs'")
    name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if name != DEFAULT_SIGNATURE:
        raise InvalidInput(f"field 'signature_name': {short(name)} is not a signature of this "
                           f"model; it has only {DEFAULT_SIGNATURE!r}")
    if ("instances" in doc) == ("inputs" in doc):
        raise InvalidInput("request body: give exactly one of 'instances' (row format) or "
                           "'inputs' (columnar format)")
    kinds = {str(t["name"]): str(t["datatype"]) for t in signature}
    if "instances" in doc:
        return InferRequest(inputs=_rows(doc["instances"], kinds)), True
    return InferRequest(inputs=_columns(doc["inputs"], kinds)), False


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == [B64]


def _named(value: Any) -> bool:
    """An object of named inputs, as opposed to a value (``{"b64": ...}`` is a value)."""
    return isinstance(value, dict) and not _is_b64(value)


def _rows(instances: Any, kinds: dict[str, str]) -> list[InferInput]:
    where = Where("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f"{where()}: expected a non-empty list, one entry per batch item")
    named = [_named(item) for item in instances]
    if not any(named):
        return [_tensor(None, instances, kinds, where)]
    if not all(named):
        raise InvalidInput(f"{where(f'[{named.index(not named[0])}]')}: mixes named-input "
                           "objects with unnamed values; use one form for every instance")
    names = list(instances[0])
    for i, item in enumerate(instances):
        if sorted(item) != sorted(names):
            raise InvalidInput(f"{where(f'[{i}]')}: names inputs {sorted(item)} but "
                               f"instances[0] names {sorted(names)}; every instance must "
                               "name the same inputs")
    return [_tensor(name, [item[name] for item in instances], kinds, Where("instances", name))
            for name in names]


def _columns(inputs: Any, kinds: dict[str, str]) -> list[InferInput]:
    if not _named(inputs):
        return [_tensor(None, inputs, kinds, Where("inputs"))]
    return [_tensor(name, value, kinds, Where(f"inputs.{name}", name))
            for name, value in inputs.items()]


def _tensor(name: str | None, value: Any, kinds: dict[str, str], where: Where) -> InferInput:
    """One input tensor from a JSON value whose nesting gives the shape."""
    shape, leaves = _nested_shape(value, where)
    check_shape(shape, where)
    # The first element decides, so a stray value is reported against the kind meant.
    textual = bool(leaves) and isinstance(leaves[0], (str, dict))
    if name is None:
        name = _default_input(textual, kinds, where)
        where = Where(where.path, name)
    if textual:
        return InferInput(name, BYTES, shape, object_array(_bytes(leaves, where), shape))
    datatype = kinds.get(name, "FP32")  # an unknown name is refused by the data plane
    if datatype == BYTES:
        raise InvalidInput(f"{where()}: input {name!r} takes encoded bytes: give "
                           '{"b64": "..."} objects (or strings), not numbers')
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            raise InvalidInput(f"{where()}: element {i} (row-major) is {short(leaf)}; "
                               f"{datatype} needs numbers")
    return InferInput(name, datatype, shape, numeric_tensor(leaves, datatype, shape, where))


def _default_input(textual: bool, kinds: dict[str, str], where: Where) -> str:
    for input_name, datatype in kinds.items():
        if (datatype == BYTES) == textual:
            return input_name
    kind = "encoded bytes" if textual else "numbers"
    raise InvalidInput(f"{where()}: this model has no input that takes {kind}; name the "
                       f"input (one of {sorted(kinds)})")


def _nested_shape(value: Any, where: Where) -> tuple[list[int], list[Any]]:
    """Shape and row-major leaves of a regular nested list (TF Serving sends no shape)."""
    shape: list[int] = []
    level = [value]
    while level and isinstance(level[0], list):
        size = len(level[0])
        if not all(isinstance(item, list) and len(item) == size for item in level):
            raise InvalidInput(f"{where()}: not a regular nested list (lists at depth "
                               f"{len(shape)} differ in length, or mix with values)")
        shape.append(size)
        level = [leaf for item in level for leaf in item]
    if any(isinstance(leaf, list) for leaf in level):
        raise InvalidInput(f"{where()}: not a regular nested list (lists at depth "
                           f"{len(shape)} mix with values)")
    return shape, level


def _bytes(leaves: list[Any], where: Where) -> list[bytes]:
    items: list[bytes] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, str):  # TF Serving: plain strings are UTF-8 text, not base64
            items.append(leaf.encode("utf-8"))
        elif _is_b64(leaf) and isinstance(leaf[B64], str):
            try:
                items.append(base64.b64decode(leaf[B64], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"{where()}: element {i} is not valid base64 "
                                   f"({short(exc)})") from None
        else:
            raise InvalidInput(f"{where()}: element {i} is {short(leaf)}; expected "
                               '{"b64": "<base64 text>"} or a string')
    return items


# --- replies ------------------------------------------------------------------------------

def encode_predict(response: InferResponse, rows: bool) -> dict[str, Any]:
    """``{"predictions": ...}`` for the row form, ``{"outputs": ...}`` for the columnar."""
    values = {out.name: _json_value(out) for out in response.outputs}
    if len(values) == 1:  # TF Serving leaves a single output unnamed
        (value,) = values.values()
        return {"predictions": value} if rows else {"outputs": value}
    if not rows:
        return {"outputs": values}
    batch = len(response.outputs[0].data) if response.outputs else 0
    return {"predictions": [{name: value[i] for name, value in values.items()}
                            for i in range(batch)]}


def _json_value(out: InferOutput) -> Any:
    if out.datatype != BYTES:
        return out.data.tolist()
    # JSON has no bytes; our BYTES outputs are UTF-8 text (classification strings).
    text = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in out.data.ravel()]
    return np.array(text, dtype=np.object_).reshape(out.data.shape).tolist()


def model_status(version: int) -> dict[str, Any]:
    """``GET /v1/models/{m}[/versions/{v}]`` for a served version (TF Serving's GetModelStatus)."""
    return {"model_version_status": [{"version": str(version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
