"""Transport-neutral inference request/response types (KServe V2 / Open Inference Protocol).

The HTTP codecs and the gRPC adapter turn wire formats into these objects and back; the
data plane only ever sees these, so every transport gets identical validation and semantics.
Tensor data is always a NumPy array already shaped like ``shape``; BYTES tensors are object
arrays whose elements are ``bytes`` (any transport-level text encoding, such as base64 in JSON,
has already been undone by the codec).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInput

if TYPE_CHECKING:  # a worker process imports this module: it must stay light (no PIL)
    from .._data.detection import Letterbox

# V2 datatype -> NumPy dtype. Explicit little-endian because the binary tensor extension and
# Triton define raw tensor bytes as little-endian regardless of the host.
_NUMERIC: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
DATATYPES: tuple[str, ...] = (*_NUMERIC, BYTES)
# ONNX Runtime's element type names (``NodeArg.type``) -> V2 datatypes.
ONNX_DATATYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": BYTES,
}

# One execution's results: output name -> array, batch axis first.
Outputs = dict[str, np.ndarray]
# A graph's inputs or outputs as its session reports them: name -> (V2 datatype, or None when
# the session does not say; shape, with str or None for dynamic axes).
GraphTensors = dict[str, tuple[str | None, list[Any]]]


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The NumPy dtype for a V2 datatype (``object`` for BYTES); unknown names are a 400."""
    if datatype == BYTES:
        return np.dtype(np.object_)
    try:
        return _NUMERIC[datatype]
    except KeyError:
        raise InvalidInput(f"datatype {datatype!r} is not supported; expected one of "
                           f"{', '.join(DATATYPES)}") from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name for a NumPy dtype (object/bytes/str arrays are BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return BYTES
    for name, candidate in _NUMERIC.items():
        # Compare ignoring byte order: an output array in native order is still e.g. FP32.
        if candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return name
    raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype")


def element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str | None = None
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: the default output
    parameters: dict[str, Any] = field(default_factory=dict)
    # Set by a detector's prepare() for ``image`` inputs: where each image sits in the square
    # tensor, so respond() maps boxes back to its pixels. Not on the wire (codecs ignore it).
    letterboxes: list[Letterbox] | None = field(default=None, repr=False, compare=False)


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str  # V2 versions are strings on the wire
    id: str | None
    outputs: list[InferOutput]
    # Filled by the execution path for metrics: "queue_s", "compute_s", "batch_size".
    timings: dict[str, float] = field(default_factory=dict)

    def output(self, name: str) -> InferOutput:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)
