"""Every bad request gets the right status and a JSON ``{"error": ...}`` naming the problem.

None of these may be a 500: the error envelope is checked for an exact status each time, and a
property test throws random request-shaped JSON at the server, alone or framed as a binary
request with a hostile ``Inference-Header-Content-Length`` (the gRPC parser has its own in
test_serve_grpc.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelmint import errors
from modelmint._repository.config import BatchingConfig
from modelmint._serve import DataPlane, InferRequest, InferResponse, create_app
from modelmint._serve.batching import request_timeout_s
from modelmint._serve.http import _guard


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server_url}", timeout=30) as client:
        yield client


def image_request(*elements: str, outputs: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES",
                                        "shape": [len(elements)], "data": list(elements)}]}
    if outputs is not None:
        body["outputs"] = outputs
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert list(doc) == ["error"]
    message = doc["error"]
    assert isinstance(message, str)
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def good(image_bytes: list[bytes]) -> str:
    return b64(image_bytes[0])


def test_valid_request_round_trip(http: httpx.Client, good: str) -> None:
    body = image_request(good) | {"id": "req-7"}
    response = http.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert doc["id"] == "req-7"
    assert (doc["model_name"], doc["model_version"]) == ("tiny", "2")
    (out,) = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [1, 2])
    assert sum(out["data"]) == pytest.approx(1.0, abs=1e-5)


def test_unknown_model_404(http: httpx.Client, good: str) -> None:
    assert_error(http.post("/v2/models/nope/infer", json=image_request(good)), 404, "'nope'")
    assert_error(http.get("/v2/models/nope"), 404, "'nope'")
    assert_error(http.get("/v2/models/nope/ready"), 404, "'nope'")


@pytest.mark.parametrize("version", ["7", "1"])  # 1 is on disk but only the latest is served
def test_unknown_version_404(http: httpx.Client, good: str, version: str) -> None:
    path = f"/v2/models/tiny/versions/{version}"
    assert_error(http.post(f"{path}/infer", json=image_request(good)), 404, "'tiny'",
                 f"version {version}")
    assert_error(http.get(path), 404, f"version {version}")
    assert_error(http.get(f"{path}/ready"), 404, f"version {version}")


def test_ready_endpoints(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/tiny/ready").status_code == 200
    assert http.get("/v2/models/tiny/versions/2/ready").status_code == 200


@pytest.mark.parametrize("version", ["abc", "1.5", "-1", "1_0"])
def test_non_integer_version_400(http: httpx.Client, good: str, version: str) -> None:
    path = f"/v2/models/tiny/versions/{version}"
    assert_error(http.post(f"{path}/infer", json=image_request(good)), 400, repr(version))
    assert_error(http.get(path), 400, "not a non-negative integer")


def tensor_body(datatype: str, shape: list[int], fill: Any = 0) -> dict[str, Any]:
    count = 1
    for dim in shape:
        count *= dim
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape,
                        "data": [fill] * count}]}


def test_wrong_shape_400(http: httpx.Client) -> None:
    response = http.post("/v2/models/tiny/infer", json=tensor_body("FP32", [1, 3, 10, 10]))
    assert_error(response, 400, "'input'", "[1, 3, 10, 10]", "[N, 3, 224, 224]")
    response = http.post("/v2/models/tiny/infer", json=tensor_body("FP32", [0, 3, 224, 224]))
    assert_error(response, 400, "N >= 1")


def test_wrong_dtype_400(http: httpx.Client) -> None:
    response = http.post("/v2/models/tiny/infer", json=tensor_body("INT32", [1, 3, 224, 224]))
    assert_error(response, 400, "'input'", "INT32", "expected FP32")


def test_non_finite_tensor_400(http: httpx.Client) -> None:
    body = json.dumps(tensor_body("FP32", [1, 3, 224, 224], float("nan")))
    response = http.post("/v2/models/tiny/infer", content=body)
    assert_error(response, 400, "NaN")


def test_undecodable_image_names_element(http: httpx.Client, good: str) -> None:
    response = http.post("/v2/models/tiny/infer", json=image_request(good, b64(b"GIF89a junk")))
    assert_error(response, 400, "image[1]", "not a decodable image")


def test_bad_base64_400(http: httpx.Client, good: str) -> None:
    response = http.post("/v2/models/tiny/infer", json=image_request(good, "not base64!"))
    assert_error(response, 400, "data[1]", "base64")


def test_both_inputs_400(http: httpx.Client, good: str) -> None:
    body = image_request(good)
    body["inputs"] += tensor_body("FP32", [1, 3, 224, 224])["inputs"]
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "both", "exactly one")


def test_no_inputs_400(http: httpx.Client) -> None:
    assert_error(http.post("/v2/models/tiny/infer", json={"inputs": []}), 400, "no input")
    assert_error(http.post("/v2/models/tiny/infer", json={}), 400, "'inputs'")


def test_unknown_input_400(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0]}]}
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "unknown input 'pixels'")


def test_unknown_output_400(http: httpx.Client, good: str) -> None:
    body = image_request(good, outputs=[{"name": "logits"}])
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "unknown output 'logits'")


@pytest.mark.parametrize("k", [0, -1, "2", True, 1.5])
def test_bad_classification_count_400(http: httpx.Client, good: str, k: Any) -> None:
    body = image_request(good, outputs=[{"name": "probabilities",
                                         "parameters": {"classification": k}}])
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "classification")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b"\xff\xfe\x00",
                                     b"[" * 100_000])
def test_malformed_json_400(http: httpx.Client, content: bytes) -> None:
    response = http.post("/v2/models/tiny/infer", content=content)
    assert_error(response, 400, "request body")


def test_data_length_mismatch_400(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                        "data": [0.0, 1.0, 2.0]}]}
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "inputs[0]",
                 "has 3 elements", "needs 150528")


def test_bad_element_type_400(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2],
                        "data": [0.5, "x"]}]}
    assert_error(http.post("/v2/models/tiny/infer", json=body), 400, "data[1]", "'x'")


def binary_post(http: httpx.Client, header: dict[str, Any], blob: bytes,
                length: str | None = None) -> httpx.Response:
    head = json.dumps(header).encode()
    value = str(len(head)) if length is None else length
    return http.post("/v2/models/tiny/infer", content=head + blob,
                     headers={b"Inference-Header-Content-Length": value.encode("utf-8")})


def test_binary_size_mismatch_400(http: httpx.Client) -> None:
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                          "parameters": {"binary_data_size": 100}}]}
    assert_error(binary_post(http, header, b"\0" * 40), 400, "binary_data_size",
                 "only 40 bytes")
    assert_error(binary_post(http, header, b"\0" * 100), 400, "602112")
    small = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1],
                         "parameters": {"binary_data_size": 4}}]}
    assert_error(binary_post(http, small, b"\0" * 12), 400, "8 bytes after")


def test_binary_bytes_element_overrun_400(http: httpx.Client) -> None:
    blob = struct.pack("<I", 1000) + b"short"
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": len(blob)}}]}
    assert_error(binary_post(http, header, blob), 400, "element 0", "claims 1000 bytes")


# Not canonical decimal: int() alone took "+5" and "1_0" (and "+5" cut the JSON short).
@pytest.mark.parametrize("length", ["abc", "0", "999999", "+5", "1_0", "0x10", "-1", "5.0",
                                    "\u00b2", "\u0663", "9" * 5000, ""])
def test_bad_header_length_400(http: httpx.Client, length: str) -> None:
    assert_error(binary_post(http, {"inputs": []}, b"", length), 400,
                 "Inference-Header-Content-Length")


def test_body_over_limit_413(small_limit_url: str, good: str) -> None:
    with httpx.Client(base_url=f"http://{small_limit_url}", timeout=30) as client:
        body = json.dumps(image_request(good)).encode()
        assert len(body) > 4096
        assert_error(client.post("/v2/models/tiny/infer", content=body), 413, "4096")

        def chunked() -> Iterator[bytes]:  # no Content-Length: the server counts the stream
            for start in range(0, len(body), 1000):
                yield body[start:start + 1000]

        response = client.post("/v2/models/tiny/infer", content=chunked())
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert_error(response, 413, "4096")
        small = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [0]}]}
        assert_error(client.post("/v2/models/tiny/infer", json=small), 400, "shape")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/v2/nothing/here"), 404, "/v2/nothing/here")
    assert_error(http.get("/"), 404)
    assert_error(http.get("/v2/models/tiny/infer"), 405, "GET")
    assert_error(http.post("/v2/health/live"), 405, "POST")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "image", "other", 3])},
    optional={"datatype": st.sampled_from(["FP32", "BYTES", "INT64", "BOOL", "FP16", "X", 1]),
              "shape": st.lists(st.integers(-2, 4) | st.sampled_from([2**31, 2**62, 10**30]),
                                max_size=4) | st.just([1] * 70) | json_values,
              "data": st.lists(json_values, max_size=6) | json_values,
              "parameters": st.fixed_dictionaries(
                  {}, optional={"binary_data_size": st.integers(-1, 10) | json_values})})
requests = st.fixed_dictionaries(
    {}, optional={"inputs": st.lists(tensors, max_size=3) | json_values,
                  "outputs": st.lists(st.fixed_dictionaries(
                      {"name": st.sampled_from(["probabilities", "logits"]) | json_values},
                      optional={"parameters": st.dictionaries(
                          st.sampled_from(["classification", "binary_data"]), json_values)}),
                      max_size=2) | json_values,
                  "id": json_values, "parameters": json_values})


# The binary header's value: exact, off by a little, or anything a client could type. HTTP
# strips a value's surrounding whitespace, and httpx refuses to send it: such a value never
# reaches a server.
header_lengths = (st.none() | st.integers(-3, 3)
                  | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                          exclude_characters="\x7f"), max_size=8
                            ).map(str.strip)
                  | st.sampled_from(["+1", "1_0", "0x1", "1e1", "\u00b9", "9" * 30]))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=requests, binary_tail=st.none() | st.binary(max_size=16), length=header_lengths)
def test_random_requests_never_500(http: httpx.Client, body: dict[str, Any],
                                   binary_tail: bytes | None, length: int | str | None) -> None:
    head = json.dumps(body).encode()
    headers: dict[bytes, bytes] = {}
    if binary_tail is not None:  # an int is an offset from the exact length
        value = str(len(head) + length) if isinstance(length, int) else length
        headers[b"Inference-Header-Content-Length"] = (
            str(len(head)) if value is None else value).encode("latin-1")
    response = http.post("/v2/models/tiny/infer", content=head + (binary_tail or b""),
                         headers=headers)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert list(response.json()) == ["error"]


class _FaultyDataPlane(DataPlane):
    """Fault injection: a bug inside the data plane (not a client error)."""

    async def infer(self, model: str, version: int | None,
                    request: InferRequest) -> InferResponse:
        raise RuntimeError("secret internal detail")


def test_unexpected_exception_is_a_bare_500_and_logged(
        repo_root: Path, good: str, caplog: pytest.LogCaptureFixture,
        serve_app: Callable[[Starlette], AbstractContextManager[str]]) -> None:
    app = create_app(_FaultyDataPlane(repo_root, models=["tiny"]))
    with caplog.at_level(logging.ERROR, logger="modelmint._serve"), serve_app(app) as url:
        response = httpx.post(f"http://{url}/v2/models/tiny/infer", json=image_request(good))
    message = assert_error(response, 500)
    assert message == "internal server error"
    assert "secret" not in response.text
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text


def test_concurrent_requests(http: httpx.Client, image_bytes: list[bytes]) -> None:
    bodies = [image_request(b64(image_bytes[i % len(image_bytes)])) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda b: http.post("/v2/models/tiny/infer", json=b), bodies))
    outputs = [r.json()["outputs"][0]["data"] for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert outputs[:6] == outputs[6:]  # same image, same answer, whatever the interleaving


def test_small_responses_are_not_delayed(http: httpx.Client) -> None:
    """Regression: without TCP_NODELAY on accepted sockets, every response written as headers +
    body waited ~40 ms for a delayed ACK (Nagle). Healthy is ~2 ms; the margin is wide."""
    timings = []
    for _ in range(9):
        started = time.perf_counter()
        assert http.post("/v2/models/tiny/infer", json={}).status_code == 400
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.025, timings


# --- request parameter and HTTP mapping ------------------------------------------------------

@pytest.mark.parametrize(("parameters", "default_us", "seconds"), [
    ({}, None, None),
    ({}, 0, None),
    ({}, 2_000, 0.002),
    ({"timeout": 5_000}, 2_000, 0.005),
    ({"timeout": 0}, 2_000, 0.002),  # 0 = not set (Triton): the server default applies
    ({"timeout": 0}, None, None),
])
def test_request_timeout_parameter(parameters: dict[str, Any], default_us: int | None,
                                   seconds: float | None) -> None:
    config = None if default_us is None else BatchingConfig(default_timeout_us=default_us)
    assert request_timeout_s(parameters, config) == seconds


@pytest.mark.parametrize("value", [-1, 1.5, "100", True, [1]])
def test_a_bad_timeout_parameter_names_the_field(value: Any) -> None:
    with pytest.raises(errors.InvalidInput, match=r"parameter 'timeout'.*microseconds"):
        request_timeout_s({"timeout": value}, BatchingConfig())


@pytest.mark.parametrize(("error", "header"), [
    (errors.ServerBusy("queue full", retry_after=0.2), "1"),
    (errors.ServerBusy("queue full", retry_after=2.3), "3"),
    (errors.ModelNotReady("loading"), "1"),  # every 503 says when to come back
    (errors.ModelNotReady("restarting", retry_after=2.5), "3"),
])
def test_http_server_busy_carries_retry_after(error: errors.MintError, header: str | None) -> None:
    async def endpoint(request: Request) -> Response:
        raise error

    async def scenario() -> httpx.Response:
        app = Starlette(routes=[Route("/busy", _guard(endpoint))])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/busy")

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.json() == {"error": error.message}
    assert response.headers.get("retry-after") == header
