"""Fixtures: a tiny random-weight model published into a temp repository, served by a real
uvicorn server on a free 127.0.0.1 port in a background thread.

Shared setup is exposed as fixtures (``publish``, ``serve_app``, ``reference_probs``) rather than
imported, so test modules need no package ``__init__`` next to other test folders.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import uvicorn
from starlette.applications import Starlette
from torch import nn

from live_server import full_server
from modelmint._data.preprocess import ImageSpec, preprocess
from modelmint._repository import ONNX_FILE, ModelMetadata, ModelRepository
from modelmint._search.publish import publish_classifier
from modelmint._serve import DataPlane, create_app
from modelmint._serve.server import ModelServer, bind_socket

# Same location rule as tests/conftest.py: shared/ sits beside the repository checkout.
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera"
LABELS = ["ants", "bees"]


def sample_paths() -> list[Path]:
    ants = sorted((DATA / "val" / "ants").glob("*.jpg"))[:3]
    bees = sorted((DATA / "val" / "bees").glob("*.jpg"))[:3]
    return [*ants, *bees]


def tiny_classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with torch.no_grad():
        # Random init gives probabilities near 0.5 for every image; sharper logits make the
        # label actually depend on the image, so label comparisons mean something.
        model[3].weight.mul_(20.0)
    return model


def publish_tiny(root: Path, name: str = "tiny", seed: int = 0) -> Path:
    repo = ModelRepository(root)
    meta = ModelMetadata(name=name, labels=list(LABELS), architecture="tiny-cnn",
                         preprocessing=ImageSpec())
    warmup = [sample_paths()[0].read_bytes()]
    ref = publish_classifier(repo, tiny_classifier(seed), meta, {}, warmup)
    return ref.path


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread; yields ``127.0.0.1:PORT``."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="session")
def start_full_server() -> Callable[..., AbstractContextManager[tuple[ModelServer, DataPlane]]]:
    return full_server


@pytest.fixture(scope="session")
def repo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Repository with ``tiny`` version 1 and 2 (2 is served: the latest)."""
    root = tmp_path_factory.mktemp("repo")
    publish_tiny(root, seed=1)
    publish_tiny(root, seed=0)
    return root


@pytest.fixture(scope="session")
def version_dir(repo_root: Path) -> Path:
    return repo_root / "tiny" / "2"


@pytest.fixture(scope="session")
def server_url(repo_root: Path) -> Iterator[str]:
    with serve(create_app(repo_root)) as url:
        yield url


@pytest.fixture(scope="session")
def small_limit_url(repo_root: Path) -> Iterator[str]:
    with serve(create_app(repo_root, max_request_bytes=4096)) as url:
        yield url


@pytest.fixture(scope="session")
def image_bytes() -> list[bytes]:
    return [p.read_bytes() for p in sample_paths()]


@pytest.fixture(scope="session")
def reference(version_dir: Path) -> ort.InferenceSession:
    """onnxruntime on the published file, outside modelmint's serving code."""
    return ort.InferenceSession(str(version_dir / ONNX_FILE), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def reference_probs(reference: ort.InferenceSession) -> Callable[[list[bytes]], np.ndarray]:
    def run(images: list[bytes]) -> np.ndarray:
        batch = np.stack([preprocess(b) for b in images])
        return np.asarray(reference.run(["probabilities"], {"input": batch})[0])

    return run


@pytest.fixture(scope="session")
def publish() -> Callable[..., Path]:
    return publish_tiny


@pytest.fixture(scope="session")
def serve_app() -> Callable[[Starlette], AbstractContextManager[str]]:
    return serve


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    return sample_paths()
