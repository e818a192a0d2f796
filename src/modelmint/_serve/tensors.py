"""Transport-neutral tensor validation and (de)serialisation, shared by every adapter.

The HTTP codec (JSON and binary bodies) and the gRPC adapter (typed ``contents`` and
``raw_input_contents``) both build tensors with these functions, so a shape, size or element
check, and its error message, exists exactly once. Raw tensors use the layout that Triton's
binary extension and the gRPC raw fields share: little-endian row-major numbers, and BYTES as
(4-byte little-endian length, bytes) per element.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .types import BYTES, InferOutput, element_count, numpy_dtype

_LEN = struct.Struct("<I")
MAX_RANK = 32
MAX_ELEMENTS = 2**48  # far above any body we accept, far below NumPy's intp limit


@dataclass(frozen=True)
class Where:
    """Names the offending field in error messages: ``field 'inputs[0].shape' of input 'x'``."""

    path: str
    name: str | None = None

    def __call__(self, sub: str = "") -> str:
        text = f"field '{self.path}{sub}'"
        return text if self.name is None else f"{text} of input {self.name!r}"

    def field(self, sub: str) -> Where:
        return Where(self.path + sub, self.name)


def checked_dtype(datatype: str, where: Where) -> np.dtype[Any]:
    """The NumPy dtype of a V2 datatype name; ``where`` is the datatype field."""
    try:
        return numpy_dtype(datatype)
    except InvalidInput as exc:
        raise InvalidInput(f"{where()}: {exc}") from None


def check_shape(shape: Any, where: Where) -> list[int]:
    """A shape as a list of non-negative ints that NumPy can describe; ``where`` is the field."""
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where()}: expected a list of non-negative integers, "
                           f"got {short(shape)}")
    # NumPy cannot even describe these (it raises ValueError deep inside), so refuse them here.
    sized = element_count([d for d in shape if d]) if shape else 1
    if len(shape) > MAX_RANK or sized > MAX_ELEMENTS:
        raise InvalidInput(f"{where()}: {short(shape)} is too large (at most "
                           f"{MAX_RANK} dimensions and {MAX_ELEMENTS} elements)")
    return list(shape)


def check_count(actual: int, expected: int, shape: list[int], where: Where) -> None:
    if actual != expected:
        raise InvalidInput(f"{where()}: has {actual} elements but shape {shape} "
                           f"needs {expected}")


# --- raw tensors ---------------------------------------------------------------------------

def tensor_from_raw(blob: memoryview | bytes, datatype: str, shape: list[int],
                    where: Where) -> np.ndarray:
    """A tensor from its raw bytes; ``where`` is the field that carried them."""
    count = element_count(shape)
    if datatype == BYTES:
        return object_array(deserialize_bytes(blob, count, where()), shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise InvalidInput(f"{where()}: binary data is {len(blob)} bytes but shape {shape} "
                           f"of {datatype} needs {expected}")
    # Copy: the body slice is read-only and may be unaligned for the element size.
    return np.frombuffer(blob, dtype=dtype).reshape(shape).copy()


def tensor_to_raw(out: InferOutput) -> bytes:
    if out.datatype == BYTES:
        return serialize_bytes(out.data)
    return np.ascontiguousarray(out.data, dtype=numpy_dtype(out.datatype)).tobytes()


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


def object_array(items: list[bytes], shape: list[int]) -> np.ndarray:
    arr = np.empty(len(items), dtype=np.object_)
    arr[:] = items  # element-wise: np.array(items) would make a fixed-width 'S' array
    return arr.reshape(shape)


# --- tensors from lists of values ----------------------------------------------------------

def flatten(data: Any, where: Where) -> list[Any]:
    """Row-major flatten of arbitrarily nested lists, without recursion (deep input is cheap)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{where()}: expected a list, got {short(data)}")
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


def numeric_tensor(data: Any, datatype: str, shape: list[int], where: Where) -> np.ndarray:
    """A numeric tensor from (nested) lists of Python values, with kind and range checks."""
    dtype = numpy_dtype(datatype)
    count = element_count(shape)
    if not isinstance(data, list):
        raise InvalidInput(f"{where()}: expected a list, got {short(data)}")
    # Fast path: NumPy infers a numeric array from a regular nested list in C; a ragged,
    # mixed-type or string-holding list falls back to the slow, element-naming check.
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        arr = np.array(None)
    if arr.dtype.kind not in "biuf":
        flat = flatten(data, where)
        for i, item in enumerate(flat):
            if (isinstance(item, bool) and datatype != "BOOL") or not isinstance(
                    item, (bool, int, float)):
                raise InvalidInput(f"{where(f'[{i}]')}: {datatype} needs "
                                   f"{_kind(datatype)}, got {short(item)}")
        try:
            arr = np.array(flat)
        except OverflowError:
            arr = np.array(flat, dtype=np.object_)
    arr = arr.reshape(-1)
    check_count(arr.size, count, shape, where)
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
                raise InvalidInput(f"{where()}: values {low}..{high} are out of "
                                   f"range for {datatype}")
    else:
        ok = arr.dtype.kind in "iuf"
    if not ok:
        raise InvalidInput(f"{where()}: {datatype} needs {_kind(datatype)}")
    with np.errstate(over="ignore"):  # e.g. 1e300 as FP32 is inf, as in Triton's cast
        return arr.astype(dtype).reshape(shape)


def _kind(datatype: str) -> str:
    if datatype == "BOOL":
        return "true/false values"
    if datatype.startswith(("INT", "UINT")):
        return "integers"
    return "numbers"


def short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."
