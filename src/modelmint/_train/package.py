"""Write one model version's files into a (temporary) directory, then publish it."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from .._repository import (
    METADATA_FILE,
    ONNX_FILE,
    REPORT_FILE,
    WARMUP_DIR,
    WEIGHTS_FILE,
    ModelMetadata,
    ModelRepository,
    VersionRef,
)
from .export import export_onnx


def warmup_request(images: Sequence[bytes], k: int = 1) -> dict[str, Any]:
    """A recorded V2 JSON request (``image`` input, base64) that replays against the version."""
    return {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                    "data": [base64.b64encode(b).decode("ascii") for b in images]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": k}}],
    }


def write_version(directory: Path, version: int, classifier: nn.Module, meta: ModelMetadata,
                  report: dict[str, Any] | None = None,
                  warmup_images: Sequence[bytes] = ()) -> None:
    classifier = classifier.eval()
    export_onnx(classifier, directory / ONNX_FILE, meta.image_spec().crop)
    state = {k: v.detach().contiguous().clone() for k, v in classifier.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE),
              metadata={"architecture": meta.architecture, "num_classes": str(len(meta.labels))})
    meta.version = version
    meta.created = meta.created or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (directory / METADATA_FILE).write_text(json.dumps(meta.to_json(), indent=2))
    (directory / REPORT_FILE).write_text(json.dumps(report or {}, indent=2))
    warmup = directory / WARMUP_DIR
    warmup.mkdir()
    for i, image in enumerate(warmup_images):
        (warmup / f"request-{i:03d}.json").write_text(json.dumps(warmup_request([image])))


def publish_model(repo: ModelRepository, classifier: nn.Module, meta: ModelMetadata,
                  report: dict[str, Any] | None = None,
                  warmup_images: Sequence[bytes] = ()) -> VersionRef:
    return repo.publish(meta.name, lambda tmp, version: write_version(
        tmp, version, classifier, meta, report, warmup_images))
