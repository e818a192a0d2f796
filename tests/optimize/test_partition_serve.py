"""A partitioned version served by the real server (worker process, HTTP and gRPC) to NVIDIA's
``tritonclient`` unchanged; and, where torch cannot be imported, a clear load failure while the
older ONNX version keeps serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from torch import nn

from live_server import full_server
from modelmint._data.preprocess import ImageSpec, preprocess
from modelmint._optimize.partition_compile import (
    onnx_exportable,
    partition_model,
    publish_partitioned,
)
from modelmint._repository import METADATA_FILE, ModelMetadata, ModelRepository
from modelmint._search.publish import publish_classifier
from modelmint._serve.torch_runner import TORCH_PARTITIONED

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera"
LABELS = ["ants", "bees"]


def tiny_classifier() -> nn.Module:
    torch.manual_seed(3)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.mul_(20.0)  # sharp logits: labels depend on the image
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return model.eval()


def no_pooling() -> Callable[[torch.fx.Node], bool]:
    """An engine without global pooling: torch runs that op, ONNX Runtime the rest."""
    exportable = onnx_exportable()
    return lambda n: exportable(n) and "adaptive_avg_pool2d" not in str(n.target)


def images() -> np.ndarray:
    files = sorted((DATA / "val" / "ants").glob("*.jpg"))[:2] + sorted(
        (DATA / "val" / "bees").glob("*.jpg"))[:2]
    return np.stack([preprocess(f, ImageSpec()) for f in files])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` version 1 (ONNX, as trained) and version 2 (partitioned, same weights)."""
    root = tmp_path_factory.mktemp("partition-repo")
    model = tiny_classifier()
    meta = ModelMetadata(name="tiny", labels=list(LABELS), architecture="tiny-cnn",
                         preprocessing=ImageSpec())
    publish_classifier(ModelRepository(root), model, meta)
    part = partition_model(model, torch.randn(2, 3, 224, 224), no_pooling(), min_size=1)
    assert part.torch_ops == {"adaptive_avg_pool2d.default": 1}
    publish_partitioned(ModelRepository(root), meta, part, {"partitioned_from": 1})
    return root


def expected_probabilities(batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(tiny_classifier()(torch.from_numpy(batch)), 1).numpy()


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[tuple[str, str]]:
    with full_server(repo, isolation="process") as (app, _):  # worker processes, as deployed
        assert app.grpc is not None
        yield app.url.removeprefix("http://"), app.grpc.address


def test_metadata_says_it_needs_torch(repo: Path) -> None:
    data = json.loads((repo / "tiny" / "2" / METADATA_FILE).read_text())
    assert data["runtime"] == TORCH_PARTITIONED
    assert data["partition"]["torch_ops"] == {"adaptive_avg_pool2d.default": 1}
    assert not (repo / "tiny" / "2" / "model.onnx").exists()


def test_tritonclient_http_and_grpc_get_the_partitioned_answers(
        server: tuple[str, str]) -> None:
    url, grpc_url = server
    batch = images()
    client = httpclient.InferenceServerClient(url)
    assert client.is_model_ready("tiny", "2")
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("tiny", [tensor])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               expected_probabilities(batch), atol=1e-4)
    # gRPC, one image: batch 1 goes through the same dynamic-batch program.
    gclient = grpcclient.InferenceServerClient(grpc_url)
    gtensor = grpcclient.InferInput("input", [1, *batch.shape[1:]], "FP32")
    gtensor.set_data_from_numpy(batch[:1])
    probs = gclient.infer("tiny", [gtensor]).as_numpy("probabilities")
    np.testing.assert_allclose(probs, expected_probabilities(batch[:1]), atol=1e-4)


def test_without_torch_the_version_fails_clearly_and_the_old_one_keeps_serving(
        repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "tiny").mkdir(parents=True)
    shutil.copytree(repo / "tiny" / "1", root / "tiny" / "1")
    script = textwrap.dedent(f"""
        import shutil, sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        from modelmint._serve import DataPlane
        dp = DataPlane({str(root)!r})
        dp.load()
        assert dp.model_ready("tiny", 1)
        shutil.copytree({str(repo / "tiny" / "2")!r}, {str(root / "tiny" / "2")!r})
        dp.lifecycle.reconcile("tiny")
        states = {{e["version"]: e for e in dp.repository_index()}}
        assert states["1"]["state"] == "READY", states
        assert states["2"]["state"] == "FAILED", states
        print("REASON", states["2"]["reason"])
        dp.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    reason = out.stdout.split("REASON", 1)[1]
    assert "needs PyTorch" in reason and TORCH_PARTITIONED in reason
