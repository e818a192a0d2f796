"""TensorFlow Serving's REST API (``/v1/models/...``) over the same data plane as V2: both
request forms, results equal to V2's, model status, and TF-style ``{"error": ...}`` replies
(400/404, never 500)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmint._data.preprocess import preprocess

PREDICT = "/v1/models/tiny:predict"


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server_url}", timeout=30) as client:
        yield client


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    doc = response.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str)
    for fragment in fragments:
        assert fragment in doc["error"]


@pytest.fixture(scope="module")
def v2_probs(http: httpx.Client, image_bytes: list[bytes]) -> np.ndarray:
    """The same images through the V2 API: TF Serving answers must be identical."""
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(image_bytes)],
                        "data": [b64(b)["b64"] for b in image_bytes]}]}
    response = http.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"]).reshape(len(image_bytes), 2)


@pytest.mark.parametrize("form", ["unnamed", "named"])
def test_row_form_images_equal_v2(http: httpx.Client, image_bytes: list[bytes],
                                  v2_probs: np.ndarray, form: str) -> None:
    instances = [b64(b) if form == "unnamed" else {"image": b64(b)} for b in image_bytes]
    response = http.post(PREDICT, json={"instances": instances,
                                        "signature_name": "serving_default"})
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["predictions"]
    np.testing.assert_array_equal(np.array(response.json()["predictions"]), v2_probs)


@pytest.mark.parametrize("form", ["unnamed", "named"])
def test_columnar_form_images_equal_v2(http: httpx.Client, image_bytes: list[bytes],
                                       v2_probs: np.ndarray, form: str) -> None:
    images = [b64(b) for b in image_bytes]
    response = http.post(PREDICT, json={"inputs": images if form == "unnamed"
                                        else {"image": images}})
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["outputs"]
    np.testing.assert_array_equal(np.array(response.json()["outputs"]), v2_probs)


@pytest.mark.parametrize("form", ["row", "named row", "columnar", "named columnar"])
def test_tensor_input_matches_onnxruntime(
        http: httpx.Client, image_bytes: list[bytes], form: str,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    images = image_bytes[:1]  # as JSON text one [3, 224, 224] tensor is already ~3 MB
    rows = np.stack([preprocess(b) for b in images]).tolist()
    body: dict[str, Any] = {
        "row": {"instances": rows},
        "named row": {"instances": [{"input": r} for r in rows]},
        "columnar": {"inputs": rows},
        "named columnar": {"inputs": {"input": rows}},
    }[form]
    response = http.post(PREDICT, json=body)
    assert response.status_code == 200, response.text
    (key,) = response.json()
    np.testing.assert_allclose(np.array(response.json()[key]), reference_probs(images),
                               atol=1e-5)


def test_version_path(http: httpx.Client, image_bytes: list[bytes],
                      v2_probs: np.ndarray) -> None:
    body = {"instances": [b64(image_bytes[0])]}
    response = http.post("/v1/models/tiny/versions/2:predict", json=body)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json()["predictions"]), v2_probs[:1])
    assert_error(http.post("/v1/models/tiny/versions/1:predict", json=body), 404, "version 1")
    assert_error(http.post("/v1/models/tiny/versions/x:predict", json=body), 400, "'x'")


def test_model_status(http: httpx.Client) -> None:
    expected = {"model_version_status": [{"version": "2", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert http.get("/v1/models/tiny").json() == expected
    assert http.get("/v1/models/tiny/versions/2").json() == expected
    assert_error(http.get("/v1/models/nope"), 404, "'nope'")
    assert_error(http.get("/v1/models/tiny/versions/1"), 404)
    assert_error(http.post("/v1/models/nope:predict", json={"instances": [[0]]}), 404, "'nope'")


@pytest.mark.parametrize(("body", "fragments"), [
    (b"{not json", ("not valid JSON",)),
    (b"[1]", ("expected a JSON object",)),
    (b"{}", ("exactly one of 'instances'",)),
    (b'{"instances": [[0]], "inputs": [[0]]}', ("exactly one of 'instances'",)),
    (b'{"instances": [], "signature_name": "serving_default"}', ("non-empty list",)),
    (b'{"instances": [[0]], "signature_name": "classify"}', ("signature_name", "'classify'")),
    (b'{"instances": [{"b64": "bm90IGFuIGltYWdl"}]}', ("image[0]", "decodable")),
    (b'{"instances": [{"b64": "***"}]}', ("'instances' of input 'image'", "base64")),
    (b'{"instances": [{"image": {"b64": "aGk="}}, [1]]}', ("instances[1]", "mixes")),
    (b'{"instances": [{"image": {"b64": "aGk="}}, {"input": [1]}]}', ("same inputs",)),
    (b'{"instances": [[1, 2], [3]]}', ("not a regular nested list",)),
    (b'{"instances": [[1, "a"]]}', ("element 1", "FP32 needs numbers")),
    (b'{"inputs": {"image": [1, 2]}}', ("takes encoded bytes",)),
    (b'{"instances": [[0, 1]]}', ("input 'input'", "shape is [1, 2]")),
    (b'{"inputs": {"mystery": [1]}}', ("unknown input 'mystery'",)),
    (b'{"inputs": {"input": [[[[NaN]]]]}}', ("shape",)),
])
def test_bad_requests_are_400(http: httpx.Client, body: bytes,
                              fragments: tuple[str, ...]) -> None:
    assert_error(http.post(PREDICT, content=body), 400, *fragments)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.builds(lambda s: {"b64": s}, st.sampled_from(["", "aGk=", "***", "bm90"]) | st.text()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["input", "image", "b64", "x"]) | st.text(max_size=4), inner,
        max_size=3),
    max_leaves=12)
bodies = st.fixed_dictionaries(
    {}, optional={"instances": json_values, "inputs": json_values,
                  "signature_name": st.sampled_from(["serving_default", "other"]) | json_values})


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies | json_values, versioned=st.booleans())
def test_random_bodies_never_500(http: httpx.Client, body: Any, versioned: bool) -> None:
    path = "/v1/models/tiny/versions/2:predict" if versioned else PREDICT
    response = http.post(path, content=json.dumps(body).encode())
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert list(response.json()) == ["error"]
