"""Models that are not classifiers: the server serves the signature a version declares.

Two tiny real ONNX graphs, built here with ``onnx.helper`` and published with their warm-up
request: a regression model (``input`` FP32 [-1, 4] -> ``prediction`` FP32 [-1, 1], no labels)
and a detection-shaped one (``boxes`` FP32 [-1, 3, 4], ``classes`` INT64 [-1, 3], ``count``
INT32 [-1]). They are served by the real server (worker processes, HTTP and gRPC on loopback)
and checked with tritonclient against ONNX Runtime run here, outside modelmint's serving code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from modelmint._repository import (
    METADATA_FILE,
    ONNX_FILE,
    WARMUP_DIR,
    ModelMetadata,
    ModelRepository,
    TensorInputSpec,
    TensorSpec,
)
from modelmint._repository.metadata import OPSET
from modelmint._serve import DataPlane, InferInput, InferRequest
from modelmint._serve.executors import ProcessExecutor
from modelmint.errors import RepositoryError

REGRESSION = [TensorSpec("prediction", "FP32", [-1, 1])]
DETECTION = [TensorSpec("boxes", "FP32", [-1, 3, 4]), TensorSpec("classes", "INT64", [-1, 3]),
             TensorSpec("count", "INT32", [-1])]
DTYPES = {"prediction": np.float32, "boxes": np.float32, "classes": np.int64, "count": np.int32}
ROWS = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)


def _graph(nodes: list[onnx.NodeProto], outputs: list[TensorSpec],
           weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    elem = {"FP32": TensorProto.FLOAT, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64}
    shape = ["batch", 4]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(t.name, elem[t.datatype], ["batch", *t.shape[1:]])
         for t in outputs],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model, full_check=True)
    return model


def regression_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((4, 1)).astype(np.float32),
               "b": np.array([0.5], np.float32)}
    nodes = [helper.make_node("MatMul", ["input", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["prediction"])]
    return _graph(nodes, REGRESSION, weights)


def detection_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    weights = {"w": rng.standard_normal((4, 12)).astype(np.float32),
               "box_shape": np.array([-1, 3, 4], np.int64)}
    nodes = [helper.make_node("MatMul", ["input", "w"], ["flat"]),
             helper.make_node("Reshape", ["flat", "box_shape"], ["boxes"]),
             helper.make_node("ArgMax", ["boxes"], ["classes"], axis=2, keepdims=0),
             helper.make_node("ArgMax", ["input"], ["top"], axis=1, keepdims=0),
             helper.make_node("Cast", ["top"], ["count"], to=TensorProto.INT32)]
    return _graph(nodes, DETECTION, weights)


def publish(root: Path, name: str, graph: onnx.ModelProto, outputs: list[TensorSpec],
            declared: list[TensorSpec] | None = None) -> Path:
    """``declared`` (default: ``outputs``) is what modelmint.json says the graph returns."""
    meta = ModelMetadata(name=name, labels=[], architecture="tiny-onnx", task="test",
                         preprocessing=TensorInputSpec(kind="tensor", shape=[4]),
                         outputs=declared or outputs)
    warmup = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                          "data": ROWS[0].tolist()}]}

    def write(tmp: Path, version: int) -> None:
        onnx.save(graph, tmp / ONNX_FILE)
        meta.version = version
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_json()))
        (tmp / WARMUP_DIR).mkdir()
        (tmp / WARMUP_DIR / "0.json").write_text(json.dumps(warmup))

    return ModelRepository(root).publish(name, write).path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signatures")
    publish(root, "regress", regression_graph(), REGRESSION)
    publish(root, "detect", detection_graph(), DETECTION)
    for name in ("regress", "detect"):
        (root / name / "config.json").write_text(json.dumps({"dynamic_batching": {
            "max_batch_size": 16, "max_queue_delay_us": 2000}}))
    return root


def reference(repo: Path, model: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / model / "1" / ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows}), strict=True))


class Urls:
    def __init__(self, http: str, grpc: str) -> None:
        self.http, self.grpc = http, grpc


@pytest.fixture(scope="module")
def urls(repo: Path, start_full_server: Callable[..., Any]) -> Iterator[Urls]:
    with start_full_server(repo, isolation="process", grpc_port=0) as (server, _):
        assert server.grpc is not None
        yield Urls(server.url.removeprefix("http://"), server.grpc.address)


def check(outputs: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(outputs) == sorted(want)
    for name, value in want.items():
        assert outputs[name].dtype == DTYPES[name], name
        assert outputs[name].shape == value.shape, name
        np.testing.assert_allclose(outputs[name], value, rtol=1e-6, atol=1e-6)


# --- the real server, through tritonclient ----------------------------------------------------

@pytest.mark.parametrize(("model", "declared"), [("regress", REGRESSION), ("detect", DETECTION)])
def test_metadata_reports_the_declared_signature(urls: Urls, model: str,
                                                 declared: list[TensorSpec]) -> None:
    expected = [t.to_json() for t in declared]
    meta = httpclient.InferenceServerClient(urls.http).get_model_metadata(model)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == expected
    with grpcclient.InferenceServerClient(urls.grpc) as client:
        message = client.get_model_metadata(model)
    assert [(t.name, t.datatype, list(t.shape)) for t in message.outputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in expected]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [
        ("input", "FP32", [-1, 4])]


@pytest.mark.parametrize("model", ["regress", "detect"])
@pytest.mark.parametrize("binary", [False, True])
def test_http_outputs_equal_onnxruntime(urls: Urls, repo: Path, model: str,
                                        binary: bool) -> None:
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    want = reference(repo, model, ROWS)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in want]
    result = httpclient.InferenceServerClient(urls.http).infer(model, [tensor], outputs=outputs)
    check({name: result.as_numpy(name) for name in want}, want)
    # No outputs named: every declared output comes back, JSON-typed by its datatype.
    default = httpclient.InferenceServerClient(urls.http).infer(model, [tensor])
    assert [o["name"] for o in default.get_response()["outputs"]] == list(want)
    check({name: default.as_numpy(name) for name in want}, want)


@pytest.mark.parametrize("model", ["regress", "detect"])
def test_grpc_outputs_equal_onnxruntime(urls: Urls, repo: Path, model: str) -> None:
    tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    want = reference(repo, model, ROWS)
    with grpcclient.InferenceServerClient(urls.grpc) as client:
        result = client.infer(model, [tensor])
        check({name: result.as_numpy(name) for name in want}, want)
        only = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(
            list(want)[-1])])
    assert [o.name for o in only.get_response().outputs] == [list(want)[-1]]


def test_concurrent_requests_through_the_server_get_their_own_rows(urls: Urls,
                                                                   repo: Path) -> None:
    want = reference(repo, "detect", ROWS)

    def one(i: int) -> dict[str, np.ndarray]:
        tensor = httpclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(ROWS[i:i + 1])
        result = httpclient.InferenceServerClient(urls.http).infer("detect", [tensor])
        return {name: result.as_numpy(name) for name in want}

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, [i % len(ROWS) for i in range(20)]))
    for i, outputs in enumerate(results):
        row = i % len(ROWS)
        check(outputs, {name: value[row:row + 1] for name, value in want.items()})


def test_tfserving_returns_every_output(urls: Urls, repo: Path) -> None:
    want = reference(repo, "detect", ROWS)
    with httpx.Client(base_url=f"http://{urls.http}", timeout=30) as http:
        rows = http.post("/v1/models/detect:predict", json={"instances": ROWS.tolist()})
        columns = http.post("/v1/models/detect:predict", json={"inputs": ROWS.tolist()})
        single = http.post("/v1/models/regress:predict", json={"instances": ROWS.tolist()})
    assert rows.status_code == columns.status_code == single.status_code == 200, rows.text
    predictions = rows.json()["predictions"]  # one object per row, as TF Serving answers
    assert len(predictions) == len(ROWS) and all(sorted(p) == sorted(want) for p in predictions)
    for name, value in want.items():
        np.testing.assert_allclose(np.array([p[name] for p in predictions]), value, rtol=1e-6)
        np.testing.assert_allclose(np.array(columns.json()["outputs"][name]), value, rtol=1e-6)
    regress = reference(repo, "regress", ROWS)["prediction"]
    np.testing.assert_allclose(np.array(single.json()["predictions"]), regress, rtol=1e-6)


def test_classification_on_a_regression_output_is_400(urls: Urls) -> None:
    tensor = httpclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(ROWS[:1])
    asked = httpclient.InferRequestedOutput("prediction", class_count=1)
    with pytest.raises(InferenceServerException) as info:
        httpclient.InferenceServerClient(urls.http).infer("regress", [tensor], outputs=[asked])
    assert info.value.status() == "400"
    assert "output 'prediction'" in str(info.value.message())
    assert "'classification'" in str(info.value.message())
    grpc_tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    grpc_tensor.set_data_from_numpy(ROWS[:1])
    with grpcclient.InferenceServerClient(urls.grpc) as client, pytest.raises(
            InferenceServerException) as grpc_info:
        client.infer("regress", [grpc_tensor], outputs=[
            grpcclient.InferRequestedOutput("prediction", class_count=1)])
    assert grpc_info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'prediction'" in str(grpc_info.value.message())


@pytest.mark.parametrize(("body", "fragments"), [
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}],
      "outputs": [{"name": "probabilities"}]},
     ["unknown output 'probabilities'", "['boxes', 'classes', 'count']"]),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]},
     ["unknown input 'image'", "exactly one input: 'input' (FP32 [N, 4])"]),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [0] * 3}]},
     ["shape is [1, 3]", "expected FP32 [N, 4]"]),
])
def test_bad_requests_name_the_signature(urls: Urls, body: dict[str, Any],
                                         fragments: list[str]) -> None:
    response = httpx.post(f"http://{urls.http}/v2/models/detect/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    for fragment in fragments:
        assert fragment in response.json()["error"]


# --- batching and the worker's transport -------------------------------------------------------

def test_a_burst_is_batched_and_split_per_request(repo: Path) -> None:
    want = reference(repo, "detect", ROWS)
    plane = DataPlane(repo, models=["detect"], isolation="process")
    try:
        plane.load()

        rows = [i % len(ROWS) for i in range(12)]

        async def burst() -> list[Any]:
            requests = [InferRequest(inputs=[InferInput("input", "FP32", [1, 4], ROWS[r:r + 1])])
                        for r in rows]
            return await asyncio.gather(*(plane.infer("detect", None, r) for r in requests))

        responses = asyncio.run(burst())
        assert max(r.timings["batch_size"] for r in responses) > 1  # the burst was batched
        for row, response in zip(rows, responses, strict=True):
            outputs = {out.name: out.data for out in response.outputs}
            assert {out.name: out.datatype for out in response.outputs} == {
                "boxes": "FP32", "classes": "INT64", "count": "INT32"}
            check(outputs, {name: value[row:row + 1] for name, value in want.items()})
    finally:
        plane.close()


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_worker_outputs_through_the_slot_or_the_pipe(repo: Path, rows: int) -> None:
    # crop=1 makes 96-byte slots: 1 row's inputs and outputs fit, 2 rows' outputs do not,
    # 8 rows' input does not either; all three paths must return the same values.
    batch = np.resize(ROWS, (rows, 4)).astype(np.float32)
    executor = ProcessExecutor(repo / "detect" / "1" / ONNX_FILE, 1, "detect",
                               outputs=[t.name for t in DETECTION])
    try:
        inputs, outputs = executor.io()
        assert inputs == {"input": ("FP32", ["batch", 4])}
        assert {name: dtype for name, (dtype, _) in outputs.items()} == {
            "boxes": "FP32", "classes": "INT64", "count": "INT32"}
        check(executor.run(batch).result(60), reference(repo, "detect", batch))
    finally:
        executor.close()


# --- what a version may declare ----------------------------------------------------------------

def test_the_signature_round_trips_and_old_versions_derive_a_classifiers() -> None:
    meta = ModelMetadata(name="d", labels=[], architecture="a", task="detection",
                         preprocessing=TensorInputSpec(kind="tensor", shape=[4]),
                         outputs=DETECTION)
    data = meta.to_json()
    assert data["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert data["outputs"] == [t.to_json() for t in DETECTION]
    assert data["preprocessing"] == {"kind": "tensor", "shape": [4]}
    back = ModelMetadata.from_json(data)
    assert back.signature == meta.signature and back.preprocessing == meta.preprocessing
    del data["inputs"], data["outputs"]
    data["labels"] = ["a", "b", "c"]
    old = ModelMetadata.from_json(data)
    assert [t.to_json() for t in old.signature[1]] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"outputs": [{"name": "p", "datatype": "FP32", "shape": [1]}]}, "batch axis first"),
    ({"outputs": [{"name": "p", "datatype": "BYTES", "shape": [-1]}]}, "datatype 'BYTES'"),
    ({"outputs": []}, "'outputs' is empty"),
    ({"outputs": [{"name": "p", "shape": [-1]}]}, "field 'outputs[0]'"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}]}, "field 'inputs'"),
    ({"preprocessing": {"kind": "tensor", "shape": [0]}}, "positive integers"),
    ({"labels": ["a"], "outputs": [{"name": "probabilities", "datatype": "FP32",
                                    "shape": [-1, 2]}]}, "with 1 labels"),
])
def test_an_unservable_signature_is_refused(change: dict[str, Any], fragment: str) -> None:
    meta = ModelMetadata(name="r", labels=[], architecture="a", task="regression",
                         preprocessing=TensorInputSpec(kind="tensor", shape=[4]),
                         outputs=REGRESSION)
    with pytest.raises(RepositoryError, match=r"^modelmint\.json: ") as info:
        ModelMetadata.from_json({**meta.to_json(), **change})
    assert fragment in str(info.value)


def test_a_graph_without_a_declared_output_is_not_served(tmp_path: Path) -> None:
    declared = [*REGRESSION, TensorSpec("score", "FP32", [-1])]
    publish(tmp_path, "liar", regression_graph(), REGRESSION, declared=declared)
    plane = DataPlane(tmp_path)
    try:
        with pytest.raises(RepositoryError, match="has no output 'score'"):
            plane.load_model("liar")
    finally:
        plane.close()
