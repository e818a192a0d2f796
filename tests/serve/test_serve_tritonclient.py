"""The server speaks V2 well enough for NVIDIA's own client, unchanged."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelmint._data.preprocess import preprocess


@pytest.fixture(scope="module")
def client(server_url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server_url)


def image_input(images: list[bytes], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    if binary:
        data = np.array(images, dtype=np.object_)  # raw file bytes, length-prefixed on the wire
    else:
        # JSON cannot carry raw bytes: the image input takes base64 text there.
        data = np.array([base64.b64encode(b) for b in images], dtype=np.object_)
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def tensor_input(images: list[bytes], binary: bool) -> httpclient.InferInput:
    batch = np.stack([preprocess(b) for b in images])
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "modelmint"
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])

    meta = client.get_model_metadata("tiny")
    assert meta["name"] == "tiny"
    assert meta["versions"] == ["2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert {(t["name"], t["datatype"]) for t in meta["inputs"]} == {("input", "FP32"),
                                                                    ("image", "BYTES")}
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get_model_metadata("tiny", "2") == meta


def test_model_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("tiny", "1")  # on disk, but only the latest is served
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_tensor_input_matches_onnxruntime(
        client: httpclient.InferenceServerClient, image_bytes: list[bytes], binary: bool,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    # As JSON text each FP32 value takes ~20 bytes: 2 images stay under the 16 MiB body limit.
    images = image_bytes if binary else image_bytes[2:4]
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("tiny", [tensor_input(images, binary)], outputs=outputs)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (len(images), 2)
    np.testing.assert_allclose(probs, reference_probs(images), atol=1e-5)
    assert result.get_response()["model_version"] == "2"


@pytest.mark.parametrize("binary", [True, False])
def test_image_input_matches_tensor_input(
        client: httpclient.InferenceServerClient, image_bytes: list[bytes], binary: bool,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    result = client.infer("tiny", [image_input(image_bytes, binary)], model_version="2")
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs, reference_probs(image_bytes), atol=1e-5)
    by_tensor = client.infer("tiny", [tensor_input(image_bytes, True)])
    np.testing.assert_allclose(probs, by_tensor.as_numpy("probabilities"), atol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension(
        client: httpclient.InferenceServerClient, image_bytes: list[bytes], binary: bool,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary,
                                               class_count=2)]
    result = client.infer("tiny", [image_input(image_bytes, True)], outputs=outputs)
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(image_bytes), 2)
    expected = reference_probs(image_bytes)
    labels = ["ants", "bees"]
    for row, probs in zip(classes, expected, strict=True):
        # Binary BYTES come back as bytes; JSON BYTES as text.
        items = [x if isinstance(x, bytes) else x.encode() for x in row]
        order = np.argsort(-probs, kind="stable")
        assert items == [f"{probs[i]:f}:{i}:{labels[i]}".encode() for i in order]
        scores = [float(x.split(b":")[0]) for x in items]
        assert scores == sorted(scores, reverse=True)


def test_classification_k_is_clipped_to_class_count(
        client: httpclient.InferenceServerClient, image_bytes: list[bytes]) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=5)]
    result = client.infer("tiny", [image_input(image_bytes[:1], True)], outputs=outputs)
    assert result.as_numpy("probabilities").shape == (1, 2)


def test_errors_reach_tritonclient_as_exceptions(
        client: httpclient.InferenceServerClient, samples: list[Path]) -> None:
    bad = image_input([b"not an image"], binary=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [bad])
    assert info.value.status() == "400"
    assert "image[0]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"
