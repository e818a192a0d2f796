"""KServe V2 over gRPC, checked with NVIDIA's own client (tritonclient.grpc) against a real
server: HTTP and gRPC on free loopback ports, one process, one event loop, one data plane."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.descriptor import Descriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import InferenceServerException

from modelmint._data.preprocess import preprocess
from modelmint._serve import DataPlane
from modelmint._serve.proto import grpc_predict_v2_pb2 as pb
from modelmint._serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from modelmint._serve.server import ModelServer


class Servers:
    def __init__(self, server: ModelServer, dataplane: DataPlane) -> None:
        self.server = server
        self.dataplane = dataplane
        self.http = server.url
        assert server.grpc is not None
        self.grpc = server.grpc.address


@pytest.fixture(scope="module")
def servers(repo_root: Path, start_full_server: Callable[..., Any]) -> Iterator[Servers]:
    """The real server assembly (:func:`build_server`, as ``run_server`` uses) in a thread."""
    with start_full_server(repo_root, grpc_port=0) as (server, dataplane):
        yield Servers(server, dataplane)


@pytest.fixture(scope="module")
def client(servers: Servers) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(servers.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def stub(servers: Servers) -> Iterator[Any]:
    """Our own generated stub, for what tritonclient never sends (typed contents, bad raw)."""
    with grpc.insecure_channel(servers.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def image_input(images: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))  # raw bytes, no base64
    return tensor


def tensor_input(batch: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def status_of(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def _fields(message: Descriptor) -> dict[str, tuple[int, int, bool, str]]:
    out: dict[str, tuple[int, int, bool, str]] = {}
    for f in message.fields:
        kind = f.message_type.full_name if f.message_type else ""
        out[f.name] = (f.number, f.type, f.is_repeated, kind)
    for nested in message.nested_types:
        for name, value in _fields(nested).items():
            out[f"{nested.name}.{name}"] = value
    return out


def test_proto_matches_triton() -> None:
    """Field numbers and types equal Triton's grpc_service.proto, message by message."""
    ours, theirs = pb.DESCRIPTOR, triton_pb.DESCRIPTOR
    for name, message in ours.message_types_by_name.items():
        assert _fields(message) == _fields(theirs.message_types_by_name[name]), name
    service = ours.services_by_name["GRPCInferenceService"]
    triton_methods = theirs.services_by_name["GRPCInferenceService"].methods_by_name
    assert len(service.methods) == 9  # the six V2 RPCs and the repository extension
    for method in service.methods:
        other = triton_methods[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name, other.output_type.full_name)


def test_health_and_metadata(client: grpcclient.InferenceServerClient, servers: Servers) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "modelmint"
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])

    meta = client.get_model_metadata("tiny", as_json=True)
    for tensor in meta["inputs"] + meta["outputs"]:
        tensor["shape"] = [int(d) for d in tensor["shape"]]  # proto JSON writes int64 as text
    assert meta == httpx.get(f"{servers.http}/v2/models/tiny").json()
    assert client.get_model_metadata("tiny", "2", as_json=True)["versions"] == ["2"]


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "2")
    # Unknown model or unserved version: NOT_FOUND (KServe's choice; HTTP answers 404).
    assert "NOT_FOUND" in status_of(lambda: client.is_model_ready("tiny", "1"))[0]
    assert "NOT_FOUND" in status_of(lambda: client.is_model_ready("nope"))[0]


def test_tensor_input_matches_onnxruntime(
        client: grpcclient.InferenceServerClient, image_bytes: list[bytes],
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    batch = np.stack([preprocess(b) for b in image_bytes])
    result = client.infer("tiny", [tensor_input(batch)], request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_probs(image_bytes),
                               atol=1e-5)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("tiny", "2", "r-1")


def test_image_input_matches_http(
        client: grpcclient.InferenceServerClient, servers: Servers, image_bytes: list[bytes],
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    probs = client.infer("tiny", [image_input(image_bytes)], model_version="2").as_numpy(
        "probabilities")
    np.testing.assert_allclose(probs, reference_probs(image_bytes), atol=1e-5)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(image_bytes)],
                        "data": [base64.b64encode(b).decode() for b in image_bytes]}]}
    over_http = httpx.post(f"{servers.http}/v2/models/tiny/infer", json=body, timeout=30).json()
    np.testing.assert_array_equal(probs.ravel(), np.float32(over_http["outputs"][0]["data"]))


def test_classification(client: grpcclient.InferenceServerClient, image_bytes: list[bytes],
                        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=2)]
    classes = client.infer("tiny", [image_input(image_bytes)], outputs=outputs).as_numpy(
        "probabilities")
    assert classes.shape == (len(image_bytes), 2)
    for row, probs in zip(classes, reference_probs(image_bytes), strict=True):
        order = np.argsort(-probs, kind="stable")
        labels = ["ants", "bees"]
        assert list(row) == [f"{probs[i]:f}:{i}:{labels[i]}".encode() for i in order]


def test_typed_contents_match_raw(stub: Any, image_bytes: list[bytes],
                                  reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    batch = np.stack([preprocess(b) for b in image_bytes[:2]])
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape),
                       contents=pb.InferTensorContents(fp32_contents=batch.ravel().tolist()))
    reply = stub.ModelInfer(request)
    assert reply.outputs[0].shape == [2, 2]
    probs = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(probs, reference_probs(image_bytes[:2]), atol=1e-5)

    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="BYTES", shape=[2],
                       contents=pb.InferTensorContents(bytes_contents=image_bytes[:2]))
    by_image = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], dtype="<f4")
    np.testing.assert_allclose(by_image.reshape(2, 2), probs, atol=1e-6)


def test_errors_map_to_status_codes(client: grpcclient.InferenceServerClient) -> None:
    image = image_input([b"not an image"])
    code, message = status_of(lambda: client.infer("nope", [image]))
    assert "NOT_FOUND" in code and "'nope'" in message
    assert "NOT_FOUND" in status_of(lambda: client.get_model_metadata("nope"))[0]

    code, message = status_of(lambda: client.infer("tiny", [image]))
    assert "INVALID_ARGUMENT" in code and "image[0]" in message

    wrong = tensor_input(np.zeros((1, 3, 10, 10), dtype=np.float32))
    code, message = status_of(lambda: client.infer("tiny", [wrong]))
    assert "INVALID_ARGUMENT" in code and "input 'input'" in message and "[1, 3, 10, 10]" in message

    code, message = status_of(lambda: client.infer("tiny", [image], model_version="x"))
    assert "INVALID_ARGUMENT" in code and "model_version" in message


def test_message_over_limit_is_resource_exhausted(
        client: grpcclient.InferenceServerClient) -> None:
    huge = image_input([b"\0" * (16 * 1024 * 1024 + 1)])  # the default max_request_bytes
    assert "RESOURCE_EXHAUSTED" in status_of(lambda: client.infer("tiny", [huge]))[0]


def _abort_details(stub: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(("build", "fragment"), [
    (lambda r: r.raw_input_contents.extend([b"", b""]), "raw_input_contents' has 2 entries"),
    (lambda r: r.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224],
                            contents=pb.InferTensorContents(int_contents=[1])),
     "field 'inputs[0].contents.int_contents' of input 'input': FP32 data goes in"),
    (lambda r: r.inputs.add(name="x", datatype="FP16", shape=[1]), "FP16 has no typed"),
    (lambda r: r.inputs.add(name="x", datatype="INT8", shape=[1],
                            contents=pb.InferTensorContents(int_contents=[300])),
     "out of range for INT8"),
    (lambda r: r.inputs.add(name="x", datatype="FP64", shape=[-1]), "non-negative"),
    (lambda r: r.inputs.add(name="x", datatype="COMPLEX", shape=[1]), "not supported"),
    (lambda r: (r.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224]),
                r.raw_input_contents.append(b"\0" * 12)), "needs 602112"),
    (lambda r: r.inputs.add(name="", datatype="FP32", shape=[1]), "inputs[0].name"),
    (lambda r: r.outputs.add(name=""), "outputs[0].name"),
])
def test_malformed_requests_are_invalid_argument(stub: Any, build: Callable[[Any], object],
                                                 fragment: str) -> None:
    request = pb.ModelInferRequest(model_name="tiny")
    build(request)
    code, details = _abort_details(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details


def test_unexpected_error_is_internal_and_generic(
        stub: Any, servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(servers.dataplane, "infer", broken)
    request = pb.ModelInferRequest(model_name="tiny")
    code, details = _abort_details(stub, request)
    assert code == grpc.StatusCode.INTERNAL
    assert details == "internal server error"


def test_repository_index_over_grpc(client: grpcclient.InferenceServerClient,
                                    servers: Servers) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    over_http = httpx.post(f"{servers.http}/v2/repository/index", timeout=30).json()
    assert index == [{k: v for k, v in e.items() if v} for e in over_http]  # JSON drops ""
    assert {"name": "tiny", "version": "2", "state": "READY"} in index


def test_repository_requests_are_checked(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="other"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "repository_name" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name" in info.value.details()


# --- never INTERNAL: random and malformed messages -------------------------------------------

@pytest.fixture(scope="module")
def raw_call(servers: Servers) -> Iterator[Callable[[str, bytes], grpc.StatusCode]]:
    """Send bytes as an RPC's request (no client-side serialization); returns the status."""
    with grpc.insecure_channel(servers.grpc) as channel:
        def call(method: str, request: bytes) -> grpc.StatusCode:
            try:
                channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(
                    request, timeout=30)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        yield call


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "RepositoryIndex"])
def test_bytes_that_are_not_protobuf_are_invalid_argument(
        raw_call: Callable[[str, bytes], grpc.StatusCode], method: str) -> None:
    """grpc's own parsing answered these with INTERNAL; the service parses them itself."""
    for garbage in (b"\xff\xff\xff", b"\x0a\x05ab"):  # a broken tag; a field cut short
        assert raw_call(method, garbage) == grpc.StatusCode.INVALID_ARGUMENT


_CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=32),
}
_PARAMETER_CHOICES: dict[str, st.SearchStrategy[Any]] = {
    "bool_param": st.booleans(), "int64_param": st.integers(-(2**63), 2**63 - 1),
    "string_param": st.text(max_size=8), "double_param": st.floats(),
    "uint64_param": st.integers(0, 2**64 - 1)}


@st.composite
def _parameters(draw: st.DrawFn, target: Any) -> None:
    for key in draw(st.lists(st.sampled_from(["classification", "binary_data", "timeout",
                                              "priority", "x"]), max_size=2, unique=True)):
        choice = draw(st.sampled_from(sorted(_PARAMETER_CHOICES)))
        setattr(target[key], choice, draw(_PARAMETER_CHOICES[choice]))


@st.composite
def infer_messages(draw: st.DrawFn) -> bytes:
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["tiny", "tiny", "nope", ""])),
        model_version=draw(st.sampled_from(["", "2", "1", "x", "9" * 30])),
        id=draw(st.text(max_size=4)))
    for _ in range(draw(st.integers(0, 3))):
        tensor = msg.inputs.add(
            name=draw(st.sampled_from(["input", "image", "", "other"])),
            datatype=draw(st.sampled_from(["FP32", "BYTES", "INT8", "INT64", "UINT64", "BOOL",
                                           "FP16", "FP64", "X", ""])),
            shape=draw(st.lists(st.integers(-2, 4) | st.sampled_from(
                [3, 224, 2**31, 2**62, -(2**63)]), max_size=4)))
        field = draw(st.sampled_from([None, *sorted(_CONTENT_VALUES)]))
        if field is not None:
            getattr(tensor.contents, field).extend(
                draw(st.lists(_CONTENT_VALUES[field], max_size=6)))
        draw(_parameters(tensor.parameters))
    msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        output = msg.outputs.add(name=draw(st.sampled_from(["probabilities", "logits", ""])))
        draw(_parameters(output.parameters))
    draw(_parameters(msg.parameters))
    return bytes(msg.SerializeToString())


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=infer_messages() | st.binary(max_size=64))
def test_random_infer_requests_never_internal(
        raw_call: Callable[[str, bytes], grpc.StatusCode], request: bytes) -> None:
    assert raw_call("ModelInfer", request) in (
        grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

