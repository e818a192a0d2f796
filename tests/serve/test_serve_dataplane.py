"""Data plane semantics: partial loading of a broken repository, strict readiness, versions,
classification."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from modelmint._serve import DataPlane, InferInput, InferRequest, RequestedOutput, create_app
from modelmint.errors import InvalidInput, ModelNotReady, NotFound


def image_request(images: list[bytes], k: int | None = None) -> InferRequest:
    data = np.empty(len(images), dtype=np.object_)
    data[:] = images
    params = {} if k is None else {"classification": k}
    return InferRequest(inputs=[InferInput("image", "BYTES", [len(images)], data)],
                        outputs=[RequestedOutput("probabilities", params)])


@pytest.fixture(scope="module")
def dataplane(repo_root: Path) -> DataPlane:
    plane = DataPlane(repo_root)
    plane.load()
    return plane


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory,
                publish: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("broken-repo")
    publish(root, "good")
    (publish(root, "corrupt") / "model.onnx").write_bytes(b"\x00garbage, not a protobuf" * 50)
    (publish(root, "badmeta") / "modelmint.json").write_text("{not json")
    warm = publish(root, "badwarmup") / "warmup" / "request-000.json"
    request = json.loads(warm.read_text())
    request["inputs"][0]["data"] = ["bm90IGFuIGltYWdl"]  # base64 of "not an image"
    warm.write_text(json.dumps(request))
    return root


def test_broken_models_are_skipped(broken_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    plane = DataPlane(broken_repo)
    with caplog.at_level(logging.ERROR, logger="modelmint._serve"):
        plane.load()
    assert sorted(plane.models) == ["good"]
    logged = caplog.text
    for name in ("corrupt", "badmeta", "badwarmup"):
        assert f"model '{name}' version 1 failed to load" in logged
    assert "warmup request failed" in logged
    assert plane.model_ready("good") and not plane.model_ready("corrupt")
    with pytest.raises(ModelNotReady, match="'corrupt' version 1 is not ready"):
        plane.model("corrupt")
    with pytest.raises(NotFound):
        plane.model_ready("missing")
    # Strict readiness: the server is ready only while every model it should serve is.
    problem = plane.not_ready_reason()
    assert not plane.ready() and problem is not None
    for name in ("corrupt", "badmeta", "badwarmup"):
        assert f"model '{name}' has no ready version (version 1 is failed)" in problem
    assert "'good'" not in problem and str(broken_repo) not in problem
    for name in ("corrupt", "badmeta"):
        plane.repository_unload(name)  # the operator takes them out of what it should serve
    assert not plane.ready() and "'badwarmup'" in (plane.not_ready_reason() or "")
    plane.repository_unload("badwarmup")
    assert plane.ready()
    plane.close()


def test_broken_repo_still_serves_the_good_model(
        broken_repo: Path, image_bytes: list[bytes],
        serve_app: Callable[[Starlette], AbstractContextManager[str]]) -> None:
    import base64

    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(image_bytes[0]).decode()]}]}
    with serve_app(create_app(broken_repo)) as url, httpx.Client(
            base_url=f"http://{url}") as http:
        ready = http.get("/v2/health/ready")
        assert ready.status_code == 400 and "model 'corrupt' has no ready" in ready.text
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/models/good/ready").status_code == 200
        assert http.post("/v2/models/good/infer", json=body).status_code == 200
        response = http.post("/v2/models/corrupt/infer", json=body)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "not ready" in response.json()["error"]
        assert "Protobuf" not in response.text  # load details stay in the server log
        ready = http.get("/v2/models/corrupt/versions/1/ready")  # says why, without paths
        error = ready.json()["error"]
        assert ready.status_code == 400 and "failed to load" in error and "Protobuf" in error
        assert str(broken_repo) not in error
        assert http.get("/v2/models/corrupt").status_code == 503


def test_versions(dataplane: DataPlane) -> None:
    assert dataplane.model("tiny").version == 2
    assert dataplane.model("tiny", 2) is dataplane.model("tiny")
    with pytest.raises(NotFound, match=r"'tiny' version 1 is not loaded.*serves version 2"):
        dataplane.model("tiny", 1)
    with pytest.raises(NotFound, match="unknown model 'other'"):
        dataplane.model("other")


def test_missing_repository_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        DataPlane(tmp_path / "nowhere")


def test_classification_semantics(dataplane: DataPlane, image_bytes: list[bytes],
                                  reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    probs = reference_probs(image_bytes)
    top1 = dataplane.infer_sync("tiny", None, image_request(image_bytes, k=1))
    out = top1.output("probabilities")
    assert (out.datatype, out.shape) == ("BYTES", [len(image_bytes), 1])
    labels = ["ants", "bees"]
    for row, p in zip(out.data, probs, strict=True):
        best = int(np.argmax(p))
        assert row[0] == f"{p[best]:.6f}:{best}:{labels[best]}".encode()
    predicted = {labels[int(np.argmax(p))] for p in probs}
    assert predicted == {"ants", "bees"}, "fixture model should not be constant"
    clipped = dataplane.infer_sync("tiny", 2, image_request(image_bytes[:1], k=10))
    assert clipped.output("probabilities").shape == [1, 2]


def test_async_infer_matches_sync(dataplane: DataPlane, image_bytes: list[bytes]) -> None:
    request = image_request(image_bytes[:2])
    sync = dataplane.infer_sync("tiny", None, request).output("probabilities").data
    result = asyncio.run(dataplane.infer("tiny", None, request))
    np.testing.assert_array_equal(result.output("probabilities").data, sync)
    assert (result.model_name, result.model_version) == ("tiny", "2")


def test_batch_size_is_bounded(repo_root: Path, image_bytes: list[bytes]) -> None:
    plane = DataPlane(repo_root, max_batch_size=2)
    plane.load()
    assert plane.infer_sync("tiny", None, image_request(image_bytes[:2]))
    with pytest.raises(InvalidInput, match=r"batch of 3 exceeds .* max_batch_size of 2"):
        plane.infer_sync("tiny", None, image_request(image_bytes[:3]))
    plane.close()


def test_image_elements_must_be_bytes(dataplane: DataPlane) -> None:
    data = np.array(["text"], dtype=np.object_)
    request = InferRequest(inputs=[InferInput("image", "BYTES", [1], data)])
    with pytest.raises(InvalidInput, match=r"image\[0\]: expected bytes"):
        dataplane.infer_sync("tiny", None, request)


def test_only_selected_models_load(broken_repo: Path) -> None:
    plane = DataPlane(broken_repo, models=["good"])
    plane.load()
    assert list(plane.models) == ["good"]
    with pytest.raises(NotFound):
        plane.model("corrupt")
