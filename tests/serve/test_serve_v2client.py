"""``modelmint._serve.v2client`` against the real server: JSON and binary FP32 tensors, BYTES
images with the classification extension, response reading, errors, warm-up documents and the
app's client snippets; answers checked against onnxruntime run outside modelmint."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelmint._app.api_deploy import _snippets
from modelmint._data.preprocess import preprocess
from modelmint._serve import DataPlane
from modelmint._serve.codec import HEADER_LENGTH, decode_request
from modelmint._serve.v2client import (
    V2Client,
    bytes_request,
    classifications,
    decode_response,
    encode_request,
    encoded_input,
    output_array,
    request_json,
    tensor_request,
    warmup_request,
)
from modelmint._tensor_names import IMAGE_INPUT, PROBABILITIES, TENSOR_INPUT, TEXT_INPUT
from modelmint.errors import (
    DeadlineExceeded,
    InvalidInput,
    MintError,
    NotFound,
    PayloadTooLarge,
)

LABELS = ["ants", "bees"]
Reference = Callable[[list[bytes]], np.ndarray]


@pytest.fixture(scope="module")
def client(server_url: str) -> V2Client:
    return V2Client(server_url)


def expected_rows(probs: np.ndarray, k: int) -> list[list[tuple[int, str]]]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(i), LABELS[i]) for i in row] for row in order]


@pytest.mark.parametrize("binary", [False, True])
def test_fp32_tensor_round_trip(client: V2Client, image_bytes: list[bytes],
                                reference_probs: Reference, binary: bool) -> None:
    images = image_bytes if binary else image_bytes[:2]  # JSON: about 3 MB per image
    batch = np.stack([preprocess(b) for b in images])
    response = client.infer("tiny", tensor_request(batch), binary=binary)
    assert (response.model_name, response.model_version) == ("tiny", "2")
    probs = output_array(response, PROBABILITIES)
    assert probs.dtype == np.float32 and probs.shape == (len(images), 2)
    want = reference_probs(images)
    np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_image_bytes_with_classification(client: V2Client, image_bytes: list[bytes],
                                         reference_probs: Reference, binary: bool) -> None:
    request = bytes_request(IMAGE_INPUT, image_bytes, classification=2)
    rows = classifications(client.infer("tiny", request, binary=binary))
    probs = reference_probs(image_bytes)
    assert [[(i, label) for _, i, label in row] for row in rows] == expected_rows(probs, 2)
    for row, p in zip(rows, probs, strict=True):
        for score, index, _ in row:
            assert score == pytest.approx(float(p[index]), abs=1e-6)  # "%f": 6 decimals


def test_in_process_data_plane_answers_the_same_request(
        client: V2Client, repo_root: Path, image_bytes: list[bytes]) -> None:
    request = bytes_request(IMAGE_INPUT, image_bytes[:3], classification=1)
    dataplane = DataPlane(repo_root, models=())
    try:
        dataplane.load_model("tiny", None)
        local = classifications(dataplane.infer_sync("tiny", None, request))
    finally:
        dataplane.close()
    assert local == classifications(client.infer("tiny", request))


def test_tensor_request_with_classification(client: V2Client, image_bytes: list[bytes],
                                            reference_probs: Reference) -> None:
    batch = np.stack([preprocess(b) for b in image_bytes[:2]]).astype(np.float64)  # converted
    rows = classifications(client.infer("tiny", tensor_request(batch, classification=1),
                                        binary=True))
    assert [[(i, label) for _, i, label in row] for row in rows] == expected_rows(
        reference_probs(image_bytes[:2]), 1)


@pytest.mark.parametrize("binary", [False, True])
def test_bodies_decode_to_the_same_request_on_the_server(binary: bool) -> None:
    """The server's own parser reads back exactly what was built: base64 images, plain text,
    floats, requested outputs."""
    blobs = [b"\x00\xffjpeg", b""]
    for request in (bytes_request(IMAGE_INPUT, blobs, classification=3),
                    bytes_request(TEXT_INPUT, ["naïve".encode(), b"x"]),
                    tensor_request(np.arange(6, dtype=np.float32).reshape(2, 3),
                                   outputs=[PROBABILITIES])):
        body, headers = encode_request(request, binary=binary)
        length = headers.get(HEADER_LENGTH)
        assert (length is not None) == binary
        decoded = decode_request(body, None if length is None else int(length))
        (sent,), (got,) = request.inputs, decoded.inputs
        assert (got.name, got.datatype, got.shape) == (sent.name, sent.datatype, sent.shape)
        assert got.data.tolist() == sent.data.tolist()
        assert [(o.name, o.parameters) for o in decoded.outputs] == [
            (o.name, o.parameters) for o in request.outputs]


def test_json_document_wire_shape() -> None:
    doc = request_json(bytes_request(IMAGE_INPUT, [b"abc"], classification=2))
    assert doc == {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                               "data": ["YWJj"]}],
                   "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    text = request_json(bytes_request(TEXT_INPUT, [b"hi there"]))
    assert text == {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                "data": ["hi there"]}]}


def test_response_reading_json_and_binary() -> None:
    json_body = (b'{"model_name":"m","model_version":"3","id":"7","outputs":['
                 b'{"name":"probabilities","datatype":"BYTES","shape":[1,2],'
                 b'"data":["0.750000:1:bees","0.250000:0:ants"]},'
                 b'{"name":"count","datatype":"INT32","shape":[2],"data":[4,5]}]}')
    response = decode_response(json_body)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "7")
    assert classifications(response) == [[(0.75, 1, "bees"), (0.25, 0, "ants")]]
    assert output_array(response, "count").tolist() == [4, 5]

    raw = np.array([[1.5, -2.0]], dtype="<f4").tobytes()
    head = (b'{"model_name":"m","model_version":"1","outputs":[{"name":"y","datatype":"FP32",'
            b'"shape":[1,2],"parameters":{"binary_data_size":8}}]}')
    binary = decode_response(head + raw, len(head))
    assert output_array(binary, "y").tolist() == [[1.5, -2.0]]

    with pytest.raises(MintError, match="no output 'nope'"):
        output_array(binary, "nope")
    with pytest.raises(MintError, match="not a classification table"):
        classifications(binary, "y")
    with pytest.raises(MintError, match="unexpected V2 response"):
        decode_response(head + raw[:4], len(head))
    with pytest.raises(MintError, match="unexpected V2 response"):
        decode_response(b"<html>oops</html>")


def test_server_errors_raise_their_class(client: V2Client, small_limit_url: str,
                                         image_bytes: list[bytes]) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        client.infer("nope", bytes_request(IMAGE_INPUT, image_bytes[:1]))
    with pytest.raises(InvalidInput, match="not a decodable image"):
        client.infer("tiny", bytes_request(IMAGE_INPUT, [b"not an image"]))
    with V2Client(small_limit_url) as small, pytest.raises(PayloadTooLarge):
        small.infer("tiny", bytes_request(IMAGE_INPUT, image_bytes[:1]), binary=True)
    with V2Client("127.0.0.1:9", timeout=2) as nowhere, pytest.raises(
            MintError, match="cannot reach the server"):
        nowhere.model_metadata("tiny")
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        with V2Client(f"{host}:{port}", timeout=0.5) as slow, pytest.raises(
                DeadlineExceeded, match="no answer"):
            slow.model_metadata("tiny")


def test_bad_requests_are_refused_before_sending() -> None:
    with pytest.raises(InvalidInput, match="no elements"):
        bytes_request(IMAGE_INPUT, [])
    with pytest.raises(InvalidInput, match="classification must be an integer >= 1"):
        bytes_request(IMAGE_INPUT, [b"x"], classification=0)
    with pytest.raises(InvalidInput, match="needs numbers"):
        tensor_request(np.array(["a", "b"]))
    with pytest.raises(InvalidInput, match="not UTF-8"):
        encode_request(bytes_request(TEXT_INPUT, [b"\xff"]))


def test_metadata_names_the_encoded_input(client: V2Client) -> None:
    meta = client.model_metadata("tiny")
    assert encoded_input(meta) == IMAGE_INPUT
    assert client.model_metadata("tiny", 2)["name"] == "tiny"
    assert encoded_input({"inputs": [{"name": TENSOR_INPUT, "datatype": "FP32"}]}) is None


def test_warmup_documents_are_what_the_server_replays(image_bytes: list[bytes]) -> None:
    one = warmup_request(IMAGE_INPUT, image_bytes[0], classification=1)
    assert one == warmup_request(IMAGE_INPUT, [image_bytes[0]], classification=1)
    replayed = decode_request(json.dumps(one).encode())  # as the server reads warmup/*.json
    assert replayed.inputs[0].data.tolist() == [image_bytes[0]]
    assert [(o.name, o.parameters) for o in replayed.outputs] == [
        (PROBABILITIES, {"classification": 1})]
    tensor = warmup_request(TENSOR_INPUT, np.zeros((2, 3), np.float32))
    assert tensor == {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3],
                                  "data": [0.0] * 6}]}


def test_app_snippets_run_against_the_server(server_url: str, samples: list[Path],
                                             tmp_path: Path) -> None:
    """The curl and tritonclient code the app shows users, run as they would paste it."""
    shutil.copy(samples[0], tmp_path / "my.jpg")
    snippets = _snippets(f"http://{server_url}", "tiny", "image")
    curl = subprocess.run(["bash", "-c", snippets["curl"]], cwd=tmp_path, capture_output=True,
                          check=True, timeout=60)
    rows = classifications(decode_response(curl.stdout))
    assert len(rows) == 1 and {label for _, _, label in rows[0]} == set(LABELS)
    python = subprocess.run([sys.executable, "-c", snippets["python"]], cwd=tmp_path,
                            capture_output=True, text=True, check=True, timeout=60)
    assert f":{rows[0][0][1]}:{rows[0][0][2]}" in python.stdout
