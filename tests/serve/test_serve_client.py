"""``modelmint._client.predict`` over a server and in-process give the same answers, and one bad
file never fails the others; a model that takes tensors only gets ``.npy`` files and gives back
every output tensor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from starlette.applications import Starlette

from modelmint._client import (
    Prediction,
    TensorPrediction,
    find_images,
    predict,
    predict_files,
    print_predictions,
)
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
from modelmint._serve import create_app
from modelmint._serve.v2client import warmup_request
from modelmint._tensor_names import TENSOR_INPUT
from modelmint.errors import InvalidInput, NotFound

LABELS = ["ants", "bees"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Path:
    """6 good images (nested), one corrupt .jpg, and files that must be skipped."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(samples):
        target = root / ("sub" if i % 2 else "") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / ".hidden.jpg").write_bytes(samples[0].read_bytes())
    (root / ".cache").mkdir()
    shutil.copy(samples[0], root / ".cache" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_images_skips_hidden_and_non_images(folder: Path) -> None:
    found, missing = find_images([folder, folder / "nope.png"])
    names = [p.name for p in found]
    assert "broken.jpg" in names and len(names) == 7
    assert not any(n.startswith(".") or n.endswith(".txt") for n in names)
    assert missing == [folder / "nope.png"]


def test_url_and_repo_agree_and_match_onnxruntime(
        folder: Path, server_url: str, repo_root: Path,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    over_http = predict([folder], "tiny", url=server_url, top_k=2)
    local = predict([folder], "tiny", repo=repo_root, top_k=2)
    assert [p.file for p in over_http] == [p.file for p in local]
    assert len(over_http) == 7
    good = [p for p in over_http if p.error is None]
    assert len(good) == 6
    (bad,) = [p for p in over_http if p.error is not None]
    assert bad.file.endswith("broken.jpg") and "not a decodable image" in bad.error
    assert bad.label is None and bad.to_json()["error"] == bad.error

    for remote, here in zip(over_http, local, strict=True):
        assert remote.label == here.label
        assert remote.error is None or here.error is not None
        for (l1, s1), (l2, s2) in zip(remote.top_k, here.top_k, strict=True):
            assert l1 == l2 and s1 == pytest.approx(s2, abs=1e-6)

    probs = reference_probs([Path(p.file).read_bytes() for p in good])
    for pred, p in zip(good, probs, strict=True):
        assert pred.label == LABELS[int(np.argmax(p))]
        assert pred.score == pytest.approx(float(p.max()), abs=1e-6)
        assert [lb for lb, _ in pred.top_k] == [LABELS[i] for i in np.argsort(-p)]
        doc = pred.to_json()
        assert set(doc) == {"file", "label", "score", "top_k"}
        assert doc["top_k"][0] == {"label": pred.label, "score": pred.score}


def test_batches_larger_than_one_request(samples: list[Path], server_url: str) -> None:
    many = samples * 6  # 36 files -> 3 requests of at most 16
    preds = predict(many, "tiny", url=server_url, top_k=1)
    assert len(preds) == 36 and all(p.error is None and len(p.top_k) == 1 for p in preds)
    assert [p.label for p in preds[:6]] == [p.label for p in preds[6:12]]


def test_missing_file_is_reported(tmp_path: Path, server_url: str, samples: list[Path]) -> None:
    preds = predict([tmp_path / "gone.jpg", samples[0]], "tiny", url=server_url)
    assert preds[0].error == "no such file or directory"
    assert preds[1].error is None and preds[1].label in LABELS


def test_errors_about_every_file_raise(samples: list[Path], server_url: str,
                                       repo_root: Path) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        predict(samples[:1], "nope", url=server_url)
    with pytest.raises(NotFound, match="'nope'"):
        predict(samples[:1], "nope", repo=repo_root)
    with pytest.raises(NotFound, match="version 9"):
        predict(samples[:1], "tiny", url=server_url, version=9)
    with pytest.raises(InvalidInput, match="exactly one of url"):
        predict(samples[:1], "tiny")
    with pytest.raises(InvalidInput, match="top_k"):
        predict(samples[:1], "tiny", repo=repo_root, top_k=0)


def test_repo_path_can_pick_an_older_version(samples: list[Path], repo_root: Path) -> None:
    v1 = predict(samples, "tiny", repo=repo_root, version=1)
    v2 = predict(samples, "tiny", repo=repo_root, version=2)
    assert [p.score for p in v1] != [p.score for p in v2]  # different weights per version


def test_print_predictions() -> None:
    console = Console(record=True, width=120)
    print_predictions([
        Prediction("a/ant[1].jpg", "ants", 0.91, [("ants", 0.91), ("bees", 0.09)]),
        Prediction("b.jpg", error="b.jpg: not a decodable image"),
    ], console)
    text = console.export_text()
    assert "a/ant[1].jpg" in text and "0.910" in text and "bees 0.090" in text
    assert "not a decodable image" in text


# --- a model that takes tensors only: .npy files in, every output tensor out ---------------

TENSOR_OUTPUTS = [TensorSpec("prediction", "FP32", [-1, 2]), TensorSpec("winner", "INT64", [-1])]
WEIGHTS = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)


def regression_graph() -> onnx.ModelProto:
    """``input`` FP32 [batch, 4] -> ``prediction`` = input @ W [batch, 2] and its argmax."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", [TENSOR_INPUT, "w"], ["prediction"]),
         helper.make_node("ArgMax", ["prediction"], ["winner"], axis=1, keepdims=0)],
        "regress", [helper.make_tensor_value_info(TENSOR_INPUT, TensorProto.FLOAT,
                                                  ["batch", 4])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("winner", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(WEIGHTS, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def tensor_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tensor-repo")
    meta = ModelMetadata(name="regress", labels=[], architecture="matmul", task="regression",
                         preprocessing=TensorInputSpec(shape=[4]), outputs=TENSOR_OUTPUTS)

    def write(tmp: Path, version: int) -> None:
        onnx.save(regression_graph(), tmp / ONNX_FILE)
        meta.version = version
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_json()))
        (tmp / WARMUP_DIR).mkdir()
        request = warmup_request(TENSOR_INPUT, np.ones((1, 4), np.float32))
        (tmp / WARMUP_DIR / "request-000.json").write_text(json.dumps(request))

    ModelRepository(root).publish("regress", write)
    return root


@pytest.fixture(scope="module")
def tensor_url(tensor_repo: Path,
               serve_app: Callable[[Starlette], AbstractContextManager[str]]) -> Iterator[str]:
    with serve_app(create_app(tensor_repo)) as url:
        yield url


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One item, a batch (float64: converted), a wrong shape, a non-array and a stray file."""
    root = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(4)
    np.save(root / "a_item.npy", rng.standard_normal(4).astype(np.float32))
    np.save(root / "b_batch.npy", rng.standard_normal((3, 4)))
    np.save(root / "c_wrong.npy", np.zeros((2, 5), np.float32))
    (root / "d_fake.npy").write_bytes(b"not numpy")
    (root / "notes.txt").write_text("skipped")
    return root


def test_tensor_model_outputs_per_npy_file(tensor_url: str, tensor_repo: Path,
                                           arrays: Path) -> None:
    over_http = predict_files([arrays, arrays / "gone.npy"], "regress", url=tensor_url)
    local = predict_files([arrays], "regress", repo=tensor_repo)
    assert all(isinstance(p, TensorPrediction) for p in [*over_http, *local])
    assert [Path(p.file).name for p in over_http] == [
        "gone.npy", "a_item.npy", "b_batch.npy", "c_wrong.npy", "d_fake.npy"]
    assert [p.to_json() for p in over_http[1:]] == [p.to_json() for p in local]
    gone, item, batch, wrong, fake = over_http
    assert gone.error == "no such file or directory"
    assert wrong.error is not None and "[2, 5]" in wrong.error and "[4]" in wrong.error
    assert fake.error is not None and "not a .npy array" in fake.error

    x = np.load(arrays / "a_item.npy")
    assert item.error is None and set(item.outputs) == {"prediction", "winner"}
    np.testing.assert_allclose(item.outputs["prediction"], x @ WEIGHTS, rtol=1e-5)
    assert item.outputs["prediction"].shape == (2,)  # one item: no batch axis
    assert item.outputs["winner"].tolist() == int(np.argmax(x @ WEIGHTS))
    rows = np.load(arrays / "b_batch.npy").astype(np.float32)
    np.testing.assert_allclose(batch.outputs["prediction"], rows @ WEIGHTS, rtol=1e-5)
    assert batch.outputs["winner"].dtype == np.int64 and batch.outputs["winner"].shape == (3,)
    doc = batch.to_json()
    assert set(doc) == {"file", "outputs"} and len(doc["outputs"]["prediction"]) == 3
    assert doc["outputs"]["winner"] == np.argmax(rows @ WEIGHTS, axis=1).tolist()


def test_classifier_files_still_get_labels(folder: Path, server_url: str) -> None:
    via_signature = predict_files([folder], "tiny", url=server_url, top_k=2)
    assert [p.to_json() for p in via_signature] == [
        p.to_json() for p in predict([folder], "tiny", url=server_url, top_k=2)]


def test_mint_predict_npy_json_and_table(tensor_url: str, arrays: Path) -> None:
    command = [sys.executable, "-m", "modelmint.cli", "predict", str(arrays / "a_item.npy"),
               "--model", "regress", "--url", f"http://{tensor_url}"]
    proc = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True,
                          timeout=120)
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    x = np.load(arrays / "a_item.npy")
    assert row["file"] == str(arrays / "a_item.npy")
    np.testing.assert_allclose(row["outputs"]["prediction"], x @ WEIGHTS, rtol=1e-5)
    console = Console(record=True, width=160)
    print_predictions(predict_files([arrays], "regress", url=tensor_url), console)
    text = console.export_text()
    assert "prediction" in text and "winner" in text and "[3, 2]" in text
    assert "not a .npy array" in text
