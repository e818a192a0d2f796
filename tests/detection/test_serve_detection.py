"""A detector version served by the real server (worker processes, HTTP and gRPC on loopback),
checked with tritonclient, plain HTTP and TF Serving REST: boxes come back where the squares
were drawn, in each original image's pixels (``image``) or the tensor's (``input``); the
request parameters ``score_threshold`` and ``max_detections`` apply; bad requests are 4xx."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from detection.tiny_detector import (
    LABELS,
    MAX_DETECTIONS,
    SPEC,
    Square,
    TinyDetector,
    detector_metadata,
    picture,
    publish_detector,
)
from live_server import full_server
from modelmint._data.detection import letterbox
from modelmint._repository import ModelMetadata, ModelRepository
from modelmint._repository.metadata import detection_signature
from modelmint._search.publish import publish_version
from modelmint._serve import DataPlane, InferRequest
from modelmint._serve.v2client import bytes_request, tensor_request
from modelmint.errors import InvalidInput, MintError

WIDE: list[Square] = [("red", (100, 120, 260, 280)), ("dim-green", (400, 300, 500, 420))]
TALL: list[Square] = [("blue", (30, 200, 130, 330))]
IMAGES = [picture(640, 480, WIDE), picture(300, 500, TALL)]
TOLERANCE = 4.0  # px of the original image: one tensor pixel is 2.5 of them at 640 -> 256


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detectors")
    publish_detector(root)
    (root / "shapes" / "config.json").write_text(json.dumps({"dynamic_batching": {
        "max_batch_size": 8, "max_queue_delay_us": 500_000}}))
    return root


class Urls:
    def __init__(self, http: str, grpc: str) -> None:
        self.http, self.grpc = http, grpc


@pytest.fixture(scope="module")
def urls(repo: Path) -> Iterator[Urls]:
    with full_server(repo, isolation="process", grpc_port=0) as (server, _):
        assert server.grpc is not None
        yield Urls(server.url.removeprefix("http://"), server.grpc.address)


def found(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
          count: int) -> dict[str, tuple[list[float], float]]:
    """label -> (box, score) of one image's detections."""
    assert (classes[count:] == -1).all() and (scores[count:] == 0).all()  # padding rows
    return {LABELS[int(classes[j])]: (boxes[j].tolist(), float(scores[j])) for j in range(count)}


def assert_squares(result: dict[str, tuple[list[float], float]], squares: list[Square]) -> None:
    assert sorted(result) == sorted(colour.removeprefix("dim-") for colour, _ in squares)
    for colour, box in squares:
        got, score = result[colour.removeprefix("dim-")]
        np.testing.assert_allclose(got, box, atol=TOLERANCE)
        assert score == pytest.approx(0.588 if colour.startswith("dim") else 1.0, abs=0.01)


def check_both(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               count: np.ndarray) -> None:
    assert boxes.shape == (2, MAX_DETECTIONS, 4) and boxes.dtype == np.float32
    assert classes.dtype == np.int32 and count.dtype == np.int32
    assert count.tolist() == [2, 1]
    assert_squares(found(boxes[0], scores[0], classes[0], 2), WIDE)
    assert_squares(found(boxes[1], scores[1], classes[1], 1), TALL)


# --- the signature ---------------------------------------------------------------------------

def test_metadata_serves_the_detection_signature_and_labels(urls: Urls) -> None:
    inputs, outputs = detection_signature(SPEC)
    meta = httpclient.InferenceServerClient(urls.http).get_model_metadata("shapes")
    assert meta["outputs"] == [t.to_json() for t in outputs]
    assert meta["inputs"] == [t.to_json() for t in inputs]
    assert meta["parameters"]["labels"] == LABELS
    with grpcclient.InferenceServerClient(urls.grpc) as client:
        message = client.get_model_metadata("shapes")
    assert [t.name for t in message.outputs] == ["boxes", "scores", "classes", "count"]


# --- every transport finds the squares in the original pixels ----------------------------------

def test_http_json_finds_boxes_in_each_images_own_pixels(urls: Urls) -> None:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(b).decode() for b in IMAGES]}]}
    reply = httpx.post(f"http://{urls.http}/v2/models/shapes/infer", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in reply.json()["outputs"]}
    check_both(out["boxes"].astype(np.float32), out["scores"], out["classes"].astype(np.int32),
               out["count"].astype(np.int32))


def _http_images(binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(IMAGES, dtype=np.object_), binary_data=binary)
    return tensor


def test_http_binary_through_tritonclient(urls: Urls) -> None:
    client = httpclient.InferenceServerClient(urls.http)
    result = client.infer("shapes", [_http_images()], outputs=[
        httpclient.InferRequestedOutput(n, binary_data=True)
        for n in ("boxes", "scores", "classes", "count")])
    check_both(*(result.as_numpy(n) for n in ("boxes", "scores", "classes", "count")))


def _grpc_images() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(IMAGES, dtype=np.object_))
    return tensor


def test_grpc_through_tritonclient(urls: Urls) -> None:
    with grpcclient.InferenceServerClient(urls.grpc) as client:
        result = client.infer("shapes", [_grpc_images()])
    check_both(*(result.as_numpy(n) for n in ("boxes", "scores", "classes", "count")))


def test_tf_serving_rest_instances(urls: Urls) -> None:
    body = {"instances": [{"image": {"b64": base64.b64encode(b).decode()}} for b in IMAGES]}
    reply = httpx.post(f"http://{urls.http}/v1/models/shapes:predict", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    rows = reply.json()["predictions"]
    assert [sorted(r) for r in rows] == [["boxes", "classes", "count", "scores"]] * 2
    check_both(*(np.asarray([r[n] for r in rows], dtype) for n, dtype in (
        ("boxes", np.float32), ("scores", np.float32), ("classes", np.int32),
        ("count", np.int32))))


def test_fp32_input_returns_tensor_pixels(urls: Urls) -> None:
    tensor, geometry = letterbox(IMAGES[0], SPEC)
    data = tensor[None]
    request = grpcclient.InferInput("input", list(data.shape), "FP32")
    request.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(urls.grpc) as client:
        result = client.infer("shapes", [request])
    count = int(result.as_numpy("count")[0])
    got = found(result.as_numpy("boxes")[0], result.as_numpy("scores")[0],
                result.as_numpy("classes")[0], count)
    for colour, box in WIDE:
        want = geometry.to_tensor(np.asarray(box, np.float32))
        np.testing.assert_allclose(got[colour.removeprefix("dim-")][0], want, atol=1.5)


# --- request parameters ------------------------------------------------------------------------

def test_parameters_over_http_and_grpc(urls: Urls) -> None:
    client = httpclient.InferenceServerClient(urls.http)
    strict = client.infer("shapes", [_http_images()], parameters={"score_threshold": 0.7})
    assert strict.as_numpy("count").tolist() == [1, 1]  # the dim green square scores 0.59
    assert strict.as_numpy("classes")[0, :1].tolist() == [0]
    with grpcclient.InferenceServerClient(urls.grpc) as grpc_client:
        one = grpc_client.infer("shapes", [_grpc_images()], parameters={"max_detections": 1})
        loose = grpc_client.infer("shapes", [_grpc_images()], parameters={
            "score_threshold": 0.5, "max_detections": MAX_DETECTIONS})
    assert one.as_numpy("count").tolist() == [1, 1]
    assert one.as_numpy("classes")[:, 0].tolist() == [0, 2]  # the best of each image
    assert loose.as_numpy("count").tolist() == [2, 1]


BAD_PARAMETERS = [({"score_threshold": 2.0}, "score_threshold"),
                  ({"score_threshold": "0.5"}, "score_threshold"),
                  ({"score_threshold": True}, "score_threshold"),
                  ({"max_detections": 0}, "max_detections"),
                  ({"max_detections": MAX_DETECTIONS + 1}, "max_detections"),
                  ({"max_detections": 2.5}, "max_detections")]


@pytest.mark.parametrize(("parameters", "named"), BAD_PARAMETERS)
def test_bad_parameters_are_400_naming_the_parameter(urls: Urls, parameters: dict[str, Any],
                                                     named: str) -> None:
    body = {"parameters": parameters, "inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1],
         "data": [base64.b64encode(IMAGES[0]).decode()]}]}
    reply = httpx.post(f"http://{urls.http}/v2/models/shapes/infer", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert named in reply.json()["error"]
    with (grpcclient.InferenceServerClient(urls.grpc) as client,
          pytest.raises(InferenceServerException) as caught):
        client.infer("shapes", [_grpc_images()], parameters=parameters)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert named in caught.value.message()


def test_a_file_that_is_not_an_image_is_400(urls: Urls) -> None:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [
        base64.b64encode(IMAGES[0]).decode(), base64.b64encode(b"not a picture").decode()]}]}
    reply = httpx.post(f"http://{urls.http}/v2/models/shapes/infer", json=body, timeout=60)
    assert reply.status_code == 400
    assert "image[1]" in reply.json()["error"]


# --- dynamic batching, hot update, warm-up ----------------------------------------------------

def test_dynamically_batched_images_of_different_sizes_keep_their_own_pixels(repo: Path) -> None:
    cases = [(picture(640, 480, [("red", (10 + 40 * i, 20, 110 + 40 * i, 140))]),
              [("red", (10 + 40 * i, 20, 110 + 40 * i, 140))]) for i in range(5)]
    cases += [(picture(300, 500, [("blue", (20, 30 + 50 * i, 90, 200 + 50 * i))]),
               [("blue", (20, 30 + 50 * i, 90, 200 + 50 * i))]) for i in range(5)]
    dataplane = DataPlane(repo)
    dataplane.load()

    async def all_at_once() -> list[Any]:
        return list(await asyncio.gather(*[
            dataplane.infer("shapes", None, bytes_request("image", [blob]))
            for blob, _ in cases]))

    try:
        responses = asyncio.run(all_at_once())
    finally:
        dataplane.close()
    assert max(r.timings["batch_size"] for r in responses) > 1  # they did share executions
    for response, (_, squares) in zip(responses, cases, strict=True):
        out = {o.name: o.data[0] for o in response.outputs}
        assert_squares(found(out["boxes"], out["scores"], out["classes"], int(out["count"])),
                       squares)


def test_hot_update_while_polling(tmp_path: Path) -> None:
    publish_detector(tmp_path)
    with full_server(tmp_path, isolation="process", grpc_port=None) as (server, dataplane):
        dataplane.start_polling(0.2)
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        versions = set()
        publish_detector(tmp_path)
        deadline = time.monotonic() + 60
        while "2" not in versions and time.monotonic() < deadline:
            result = client.infer("shapes", [_http_images()])  # never fails meanwhile
            check_both(*(result.as_numpy(n) for n in ("boxes", "scores", "classes", "count")))
            versions.add(result.get_response()["model_version"])
    assert "2" in versions


def test_a_version_whose_warmup_fails_is_not_served(tmp_path: Path) -> None:
    ref = publish_version(tmp_path, detector_metadata("shapes"), TinyDetector())
    warmup = next((ref.path / "warmup").glob("*.json"))
    doc = json.loads(warmup.read_text())
    doc["parameters"] = {"max_detections": 0}
    warmup.write_text(json.dumps(doc))
    dataplane = DataPlane(tmp_path)
    try:
        dataplane.load()
        ready, why = dataplane.model_readiness("shapes")
        assert not ready and "warmup request failed" in why and "max_detections" in why
    finally:
        dataplane.close()


def test_a_graph_whose_classes_differ_from_the_labels_is_refused(tmp_path: Path) -> None:
    two_labels = ModelMetadata(name="shapes", labels=["a", "b"], architecture="x",
                            preprocessing=SPEC, task="object-detection",
                            inputs=detection_signature(SPEC)[0],
                            outputs=detection_signature(SPEC)[1])
    publish_version(tmp_path, two_labels, TinyDetector())  # 3 classes in the graph, 2 labels
    dataplane = DataPlane(tmp_path)
    try:
        dataplane.load()
        ready, why = dataplane.model_readiness("shapes")
        assert not ready and "dense_scores" in why
    finally:
        dataplane.close()


# --- never a 500 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(repo: Path) -> Iterator[DataPlane]:
    dataplane = DataPlane(ModelRepository(repo))
    dataplane.load()
    yield dataplane
    dataplane.close()


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True),
                   st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threshold=VALUES, limit=VALUES, tensor=st.booleans())
def test_any_parameters_give_detections_or_a_400(local: DataPlane, threshold: Any, limit: Any,
                                                 tensor: bool) -> None:
    request: InferRequest = (tensor_request(letterbox(IMAGES[1], SPEC)[0][None]) if tensor
                             else bytes_request("image", IMAGES[1:]))
    request.parameters = {k: v for k, v in (("score_threshold", threshold),
                                            ("max_detections", limit)) if v is not None}
    try:
        response = local.infer_sync("shapes", None, request)
    except MintError as exc:
        assert isinstance(exc, InvalidInput), exc
        assert any(name in exc.message for name in request.parameters)
        return
    count = int(response.output("count").data[0])
    assert 0 <= count <= (limit if isinstance(limit, int) else MAX_DETECTIONS)


def test_box_selection_runs_off_the_event_loop(local: DataPlane) -> None:
    """NMS takes milliseconds per image: on the event loop it would hold every other request."""
    servable = local.servable("shapes", None)
    assert servable.model is not None and servable.model.detector is not None
    detector = servable.model.detector
    threads: list[str] = []
    select = detector.select

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return select(*args)

    async def one() -> tuple[Any, str]:
        response = await local.infer("shapes", None, bytes_request("image", IMAGES[1:2]))
        return response, threading.current_thread().name

    detector.select = recording  # type: ignore[method-assign]
    try:
        response, loop_thread = asyncio.run(one())
    finally:
        del detector.select
    assert int(response.output("count").data[0]) >= 1
    assert threads and loop_thread not in threads
