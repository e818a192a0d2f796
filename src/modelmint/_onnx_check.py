"""Refuses an ONNX file whose external data lies outside its version folder.

A tensor's bytes may live in another file: ``data_location: EXTERNAL`` with a ``location``
relative to the model file, which onnxruntime opens while loading the model. A crafted model
could name ``../../secret``, ``/etc/shadow`` or a link to either there and have that file served
as weights. Whether onnx or onnxruntime refuse it depends on their versions, so this module
checks by itself: it walks the protobuf wire format of the file to every tensor (memory-mapped:
the weights are stepped over, never copied) and resolves each location inside the folder.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RepositoryError

# The messages of onnx.proto on a path from the model to a tensor, as message -> {field number:
# message that field holds}. Field numbers never change (protobuf's compatibility rule).
MODEL, GRAPH, NODE, ATTRIBUTE, FUNCTION, TRAINING_INFO, SPARSE_TENSOR, TENSOR = (
    "ModelProto", "GraphProto", "NodeProto", "AttributeProto", "FunctionProto",
    "TrainingInfoProto", "SparseTensorProto", "TensorProto")
TENSOR_PATHS: dict[str, dict[int, str]] = {
    MODEL: {7: GRAPH, 20: TRAINING_INFO, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE_TENSOR},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE_TENSOR,
                23: SPARSE_TENSOR},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},
    TRAINING_INFO: {1: GRAPH, 2: GRAPH},
    SPARSE_TENSOR: {1: TENSOR, 2: TENSOR},
}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION = 8, 13, 14  # TensorProto's fields
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_KEY, _VALUE = 1, 2  # StringStringEntryProto's fields
_VARINT, _FIXED64, _LENGTH, _GROUP_START, _GROUP_END, _FIXED32 = 0, 1, 2, 3, 4, 5


class _Malformed(Exception):
    """Not protobuf wire format. onnxruntime's parser refuses such a file with its own error, and
    this walker accepts all that parser accepts (groups, unknown fields, any depth), so nothing
    it could load goes unchecked."""


@dataclass
class _Tensor:
    name: str = ""
    external: bool = False
    locations: list[bytes] = field(default_factory=list)


def check_external_data(model_file: Path) -> None:
    """Raise :class:`RepositoryError` when a tensor of ``model_file`` takes its data from
    anything but a regular file inside ``model_file``'s folder: an absolute path, a path out
    through ``..``, a symbolic link that leads out, or no location at all."""
    folder = model_file.parent
    for tensor in _tensors(model_file):
        if tensor.external and not tensor.locations:
            raise RepositoryError(f"{model_file}: tensor {tensor.name!r} has external data but "
                                  "names no location")
        for location in tensor.locations:
            problem = _outside(folder, location)
            if problem:
                raise RepositoryError(f"{model_file}: tensor {tensor.name!r} takes its data "
                                      f"from {location.decode(errors='replace')!r}, {problem}; "
                                      "external data must be a file inside the version folder")


def _outside(folder: Path, location: bytes) -> str | None:
    """Why ``location`` is not a regular file inside ``folder``, or None when it is."""
    if not location or b"\0" in location:
        return "which is not a file name"
    name = location.decode(errors="surrogateescape")  # as the OS takes the bytes
    if name.startswith("/"):
        return "an absolute path"
    try:
        root = folder.resolve()
        if not Path(os.path.normpath(root / name)).is_relative_to(root):
            return "which leads outside it"
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            return "which leads outside it through a symbolic link"
        if not target.is_file():
            return "which is not a file in it" if target.exists() else "which does not exist"
    except (OSError, RuntimeError):  # RuntimeError: a loop of symbolic links
        return "which cannot be resolved"
    return None


def _tensors(model_file: Path) -> Iterator[_Tensor]:
    try:
        with model_file.open("rb") as f:
            if not os.fstat(f.fileno()).st_size:
                return  # nothing to map: onnxruntime says what is wrong with an empty file
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                yield from _walk(buf)
    except _Malformed:
        return
    except OSError as exc:
        raise RepositoryError(f"{model_file}: cannot be read ({exc.strerror or exc})") from exc


def _walk(buf: mmap.mmap) -> Iterator[_Tensor]:
    stack = [(MODEL, 0, len(buf))]  # a stack, not recursion: graphs nest to any depth
    while stack:
        kind, start, end = stack.pop()
        if kind == TENSOR:
            yield _tensor(buf, start, end)
            continue
        children = TENSOR_PATHS[kind]
        found = [(children[number], value, stop)
                 for number, wire, value, stop in _fields(buf, start, end)
                 if wire == _LENGTH and number in children]
        stack.extend(reversed(found))  # tensors come out in file order


def _tensor(buf: mmap.mmap, start: int, end: int) -> _Tensor:
    tensor = _Tensor()
    for number, wire, value, stop in _fields(buf, start, end):
        if number == _TENSOR_NAME and wire == _LENGTH:
            tensor.name = buf[value:stop].decode(errors="replace")
        elif number == _DATA_LOCATION and wire == _VARINT:
            tensor.external = value == _EXTERNAL  # the last one counts, as in protobuf
        elif number == _EXTERNAL_DATA and wire == _LENGTH:
            key = text = b""
            for entry_number, entry_wire, a, b in _fields(buf, value, stop):
                if entry_wire == _LENGTH and entry_number == _KEY:
                    key = buf[a:b]
                elif entry_wire == _LENGTH and entry_number == _VALUE:
                    text = buf[a:b]
            if key == b"location":
                tensor.locations.append(text)
    return tensor


def _fields(buf: mmap.mmap, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start of the bytes, end of the bytes) per field."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == _LENGTH:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        elif wire == _GROUP_START:
            pos = _skip_group(buf, pos, end)
        else:
            raise _Malformed
        if pos > end:
            raise _Malformed


def _skip_group(buf: mmap.mmap, pos: int, end: int) -> int:
    depth = 1
    while depth:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == _VARINT:
            pos = _varint(buf, pos, end)[1]
        elif wire == _LENGTH:
            length, pos = _varint(buf, pos, end)
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        elif wire in (_GROUP_START, _GROUP_END):
            depth += 1 if wire == _GROUP_START else -1
        else:
            raise _Malformed
        if pos > end:
            raise _Malformed
    return pos


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:  # at most 10 bytes
        if pos >= end:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _Malformed
