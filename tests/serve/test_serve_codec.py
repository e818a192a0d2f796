"""The V2 codec on its own: JSON/binary decoding, response framing, compression."""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmint._serve import (
    DataPlane,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
)
from modelmint._serve.codec import decode_request, encode_response, serialize_bytes
from modelmint.errors import InvalidInput


def decode(doc: dict[str, object], tail: bytes | None = None) -> InferRequest:
    head = json.dumps(doc).encode()
    if tail is None:
        return decode_request(head)
    return decode_request(head + tail, len(head))


def tensor(name: str, datatype: str, shape: list[int], **fields: object) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, **fields}


def test_flat_and_nested_json_data_agree() -> None:
    flat = decode({"inputs": [tensor("x", "FP32", [2, 3], data=[0, 1, 2, 3, 4.5, 5])]})
    nested = decode({"inputs": [tensor("x", "FP32", [2, 3], data=[[0, 1, 2], [3, 4.5, 5]])]})
    for request in (flat, nested):
        (x,) = request.inputs
        assert x.data.dtype == np.float32 and x.data.shape == (2, 3)
        np.testing.assert_array_equal(x.data, [[0, 1, 2], [3, 4.5, 5]])


@pytest.mark.parametrize(("datatype", "data", "fragment"), [
    ("INT8", [1, 300], "out of range for INT8"),
    ("UINT8", [-1, 2], "out of range for UINT8"),
    ("INT32", [1.5, 2], "INT32 needs integers"),
    ("BOOL", [1, 0], "BOOL needs true/false"),
    ("FP32", [True, False], "FP32 needs numbers"),
    ("FP32", [None, 1.0], "data[0]"),
    ("INT64", [2**70, 1], "out of range for INT64"),
])
def test_json_element_types_are_checked(datatype: str, data: list[object],
                                        fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        decode({"inputs": [tensor("x", datatype, [2], data=data)]})


@pytest.mark.parametrize("shape", [[0, 10**30], [0, 2**40, 2**40], [1] * 70])
def test_absurd_shapes_are_400(shape: list[int]) -> None:
    with pytest.raises(InvalidInput, match="too large"):
        decode({"inputs": [tensor("x", "FP32", shape, data=[])]})
    with pytest.raises(InvalidInput, match="too large"):
        decode({"inputs": [tensor("x", "BYTES", shape,
                                  parameters={"binary_data_size": 0})]}, b"")


def test_json_integer_and_bool_tensors() -> None:
    request = decode({"inputs": [tensor("i", "INT64", [2], data=[-(2**40), 7]),
                                 tensor("b", "BOOL", [2], data=[True, False])]})
    assert request.inputs[0].data.tolist() == [-(2**40), 7]
    assert request.inputs[1].data.dtype == np.bool_


def test_binary_tensors_in_order() -> None:
    floats = np.arange(6, dtype="<f4")
    texts = serialize_bytes(np.array([b"ab", b"", b"\xff\x00"], dtype=np.object_))
    request = decode({"inputs": [
        tensor("f", "FP32", [2, 3], parameters={"binary_data_size": floats.nbytes}),
        tensor("j", "INT32", [1], data=[5]),
        tensor("s", "BYTES", [3], parameters={"binary_data_size": len(texts)}),
    ]}, floats.tobytes() + texts)
    f, j, s = request.inputs
    np.testing.assert_array_equal(f.data, floats.reshape(2, 3))
    assert j.data.tolist() == [5]
    assert s.data.tolist() == [b"ab", b"", b"\xff\x00"]  # raw bytes, no base64 in binary


def test_json_bytes_base64_only_for_image() -> None:
    request = decode({"inputs": [tensor("image", "BYTES", [1], data=["aGk="]),
                                 tensor("text", "BYTES", [1], data=["aGk="])]})
    assert request.inputs[0].data.tolist() == [b"hi"]
    assert request.inputs[1].data.tolist() == [b"aGk="]


def test_bytes_element_count_must_match() -> None:
    blob = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    with pytest.raises(InvalidInput, match="more than the 1 elements"):
        decode({"inputs": [tensor("s", "BYTES", [1],
                                  parameters={"binary_data_size": len(blob)})]}, blob)
    with pytest.raises(InvalidInput, match="truncated 4-byte length"):
        decode({"inputs": [tensor("s", "BYTES", [1], parameters={"binary_data_size": 2})]},
               b"\x01\x00")


def test_binary_without_header_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="no Inference-Header-Content-Length"):
        decode({"inputs": [tensor("x", "FP32", [1], parameters={"binary_data_size": 4})]})


def test_response_framing_read_by_tritonclient() -> None:
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    classes = np.array([[b"0.750000:1:bees"]], dtype=np.object_)
    response = InferResponse("m", "3", "r1", [InferOutput("p", "FP32", [1, 2], probs),
                                              InferOutput("c", "BYTES", [1, 1], classes)])
    request = InferRequest(outputs=[RequestedOutput("p", {"binary_data": True}),
                                    RequestedOutput("c", {"binary_data": False})])
    body, header_length = encode_response(response, request)
    assert header_length is not None
    head = json.loads(body[:header_length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == ["0.750000:1:bees"]
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("p"), probs)
    assert result.get_response()["id"] == "r1"

    json_only, none = encode_response(response, InferRequest())
    assert none is None and "binary_data_size" not in json_only.decode()
    everything, length = encode_response(
        response, InferRequest(parameters={"binary_data_output": True}))
    assert length is not None and len(everything) == length + 8 + 4 + 15


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(server_url: str, image_bytes: list[bytes], algorithm: str) -> None:
    client = httpclient.InferenceServerClient(server_url)
    tensor_in = httpclient.InferInput("image", [1], "BYTES")
    tensor_in.set_data_from_numpy(np.array(image_bytes[:1], dtype=np.object_))
    result = client.infer("tiny", [tensor_in], request_compression_algorithm=algorithm)
    assert result.as_numpy("probabilities").shape == (1, 2)


def test_gzip_bomb_is_413(small_limit_url: str) -> None:
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    assert len(bomb) < 4096
    response = httpx.post(f"http://{small_limit_url}/v2/models/tiny/infer", content=bomb,
                          headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]
    response = httpx.post(f"http://{small_limit_url}/v2/models/tiny/infer", content=b"xx",
                          headers={"Content-Encoding": "br"})
    assert response.status_code == 400


_dims = st.integers(0, 3) | st.sampled_from([-1, 2**31, 2**62, 10**30])
_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
            | st.text(max_size=4))
_data = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def plane(repo_root: Path) -> Iterator[DataPlane]:
    dataplane = DataPlane(repo_root, models=["tiny"])
    dataplane.load()
    yield dataplane
    dataplane.close()


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["input", "image", "x"]),
       datatype=st.sampled_from(["FP32", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "X"]),
       shape=st.lists(_dims, max_size=5) | st.just([1] * 70), data=_data,
       tail=st.none() | st.binary(max_size=24))
def test_decoder_and_dataplane_only_raise_invalid_input(
        plane: DataPlane, name: str, datatype: str, shape: list[int], data: object,
        tail: bytes | None) -> None:
    """Anything a client can put in one tensor is a 400 or an answer, never another error."""
    fields: dict[str, object] = {"data": data} if tail is None else {
        "parameters": {"binary_data_size": len(tail)}}
    try:
        request = decode({"inputs": [tensor(name, datatype, shape, **fields)]}, tail)
        plane.infer_sync("tiny", None, request)
    except InvalidInput:
        pass
