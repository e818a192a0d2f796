"""The external-data check: every tensor of an ONNX file, wherever onnx.proto lets one sit,
must take its data from a regular file inside the model's folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from onnx import TensorProto, helper, numpy_helper

from modelmint._onnx_check import MODEL, TENSOR, TENSOR_PATHS
from modelmint._repository import check_external_data
from modelmint.errors import RepositoryError


def external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def graph(nodes: list[onnx.NodeProto] | None = None,
          initializer: list[TensorProto] | None = None, name: str = "g") -> onnx.GraphProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    return helper.make_graph(nodes or [], name, [], [out], initializer=initializer or [])


def in_initializer(t: TensorProto) -> onnx.ModelProto:
    return helper.make_model(graph(initializer=[t]))


def in_subgraph(t: TensorProto) -> onnx.ModelProto:
    branch = graph(initializer=[t], name="branch")
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=graph(name="e"))
    return helper.make_model(graph([node]))


def in_attribute(t: TensorProto) -> onnx.ModelProto:
    return helper.make_model(graph([helper.make_node("Constant", [], ["y"], value=t)]))


def in_function(t: TensorProto) -> onnx.ModelProto:
    body = helper.make_node("Constant", [], ["y"], value=t)
    function = helper.make_function("local", "f", [], ["y"], [body],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(graph(), functions=[function],
                             opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("local", 1)])


def in_sparse_initializer(t: TensorProto) -> onnx.ModelProto:
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "i")
    model = helper.make_model(graph())
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(t, indices, [8]))
    return model


def in_training_info(t: TensorProto) -> onnx.ModelProto:
    model = helper.make_model(graph())
    model.training_info.add().initialization.CopyFrom(graph(initializer=[t], name="init"))
    return model


PLACES = [in_initializer, in_subgraph, in_attribute, in_function, in_sparse_initializer,
          in_training_info]


@pytest.fixture()
def version(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(16))
    (tmp_path / "repo" / "m" / "secret.bin").write_bytes(b"secret!!" * 2)
    (tmp_path / "outside.bin").write_bytes(b"secret!!" * 2)
    return folder


def save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("place", PLACES, ids=lambda f: f.__name__)
def test_data_inside_the_folder_passes(version: Path, place: Callable[..., onnx.ModelProto]
                                       ) -> None:
    check_external_data(save(place(external("w", "weights.bin")), version))


@pytest.mark.parametrize("place", PLACES, ids=lambda f: f.__name__)
def test_data_outside_the_folder_is_refused(version: Path,
                                            place: Callable[..., onnx.ModelProto]) -> None:
    (version / "link.bin").symlink_to(version.parents[2] / "outside.bin")
    cases = {"../secret.bin": "which leads outside it",
             str(version.parents[2] / "outside.bin"): "an absolute path",
             "link.bin": "which leads outside it through a symbolic link",
             "nowhere.bin": "which does not exist",
             ".": "which is not a file in it"}
    for location, why in cases.items():
        path = save(place(external("w", location)), version)
        with pytest.raises(RepositoryError) as info:
            check_external_data(path)
        assert f"tensor 'w' takes its data from {location!r}, {why}; " in str(info.value)
        assert "must be a file inside the version folder" in str(info.value)


def test_every_tensor_is_checked_not_just_the_first(version: Path) -> None:
    model = helper.make_model(graph(initializer=[external("fine", "weights.bin"),
                                                 external("bad", "../secret.bin")]))
    with pytest.raises(RepositoryError, match="tensor 'bad'"):
        check_external_data(save(model, version))


def test_external_without_a_location_is_refused(version: Path) -> None:
    tensor = external("w", "weights.bin")
    del tensor.external_data[:]
    with pytest.raises(RepositoryError, match="names no location"):
        check_external_data(save(in_initializer(tensor), version))


def test_wire_format_oddities_protobuf_accepts_are_walked(version: Path) -> None:
    # An unknown group field before the graph, and the graph split in two (protobuf merges
    # repeated occurrences of a message field): onnx parses this, so the check must see it.
    model = helper.make_model(graph())
    head = model.SerializeToString()
    group = bytes([0xC3, 0x3E, 0x08, 0x01, 0xC4, 0x3E])  # field 1000: start, varint, end
    extra = onnx.ModelProto()
    extra.graph.initializer.append(external("late", "../secret.bin"))
    data = group + head + extra.SerializeToString()
    parsed = onnx.ModelProto.FromString(data)
    assert [t.name for t in parsed.graph.initializer] == ["late"]
    path = version / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(RepositoryError, match="tensor 'late'"):
        check_external_data(path)


def test_files_that_are_not_onnx_are_left_to_onnxruntime(version: Path) -> None:
    for content in (b"", b"\x00garbage" * 50, b"\xff" * 11):
        (version / "model.onnx").write_bytes(content)
        check_external_data(version / "model.onnx")


def test_every_path_to_a_tensor_in_onnx_proto_is_walked() -> None:
    """Derived from the onnx package's own descriptors: a newer onnx.proto that adds a place
    for tensors fails here until the check walks it."""
    tensor = onnx.TensorProto.DESCRIPTOR

    def holds_tensors(d: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
        return d is tensor or any(
            f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name not in seen
            and holds_tensors(f.message_type, seen | {d.full_name}) for f in d.fields)

    found: dict[str, dict[int, str]] = {}
    todo = [onnx.ModelProto.DESCRIPTOR]
    while todo:
        d = todo.pop()
        if d.name in found or d is tensor:
            continue
        found[d.name] = {f.number: f.message_type.name for f in d.fields
                         if f.type == FieldDescriptor.TYPE_MESSAGE
                         and holds_tensors(f.message_type)}
        todo.extend(f.message_type for f in d.fields if f.type == FieldDescriptor.TYPE_MESSAGE)
    found = {name: fields for name, fields in found.items() if fields}
    assert found == TENSOR_PATHS
    assert MODEL in found and TENSOR not in found
