"""The EfficientNet-Lite0 detector and the Faster R-CNN one train on their cached features and
publish their preprocessing; the exported graph, fed what serving feeds it (the letterbox of that
preprocessing: mean = std = 0.5 for EfficientNet-Lite0), gives the scores training measured on
the cache (FCOS) or the model's own on the same input (Faster R-CNN, whose choice of proposals
FP16 features can reorder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelmint._data.detection import LetterboxSpec, letterbox
from modelmint._data.detection_data import load_detection_data
from modelmint._repository import ONNX_FILE
from modelmint._tasks.detection.backbones import EFFICIENTNET_LITE0, MOBILENET, DetectionBackbone
from modelmint._tasks.detection.candidates import detection_candidates
from modelmint._tasks.detection.export import MAX_UNMATCHED, _unmatched_rows
from modelmint._tasks.detection.features import PrefixEngine, view_features

from .shapes import make_shapes

PARAMS = {"input_size": 256, "lr": 3e-3, "epochs": 2, "frozen_blocks": 4, "views": 1,
          "width": 32, "head_convs": 1}


class FixedTrial:
    """The trial's side of a candidate: fixed parameters, never pruned."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _get(self, key: str) -> Any:
        assert key.startswith(self.prefix), key
        return PARAMS[key[len(self.prefix):]]

    def suggest_float(self, key: str, *args: Any, **kwargs: Any) -> float:
        return float(self._get(key))

    def suggest_int(self, key: str, *args: Any, **kwargs: Any) -> int:
        return int(self._get(key))

    def suggest_categorical(self, key: str, choices: list[Any]) -> Any:
        value = self._get(key)
        assert value in choices
        return value

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False


@pytest.mark.parametrize(("backbone", "head"), [(EFFICIENTNET_LITE0, "fcos"),
                                                 (MOBILENET, "faster_rcnn")])
def test_detector_serves_what_it_scored(tmp_path: Path, backbone: DetectionBackbone,
                                        head: str) -> None:
    folder = make_shapes(tmp_path / "shapes", images=16, seed=2, size_range=(160, 220))
    data = load_detection_data(folder, seed=0)
    data.extra["seed"] = 0
    candidate = next(c for c in detection_candidates() if c.name == f"{backbone.name}/{head}")
    workdir = tmp_path / "run" / "trials" / "000"
    fitted = candidate.fit(data, FixedTrial(f"{candidate.key}."),  # type: ignore[arg-type]
                           time.monotonic() + 300, workdir)
    assert fitted.architecture == f"{backbone.name}+{head}"
    assert fitted.provenance["backbone"]["name"] == backbone.name
    spec = LetterboxSpec.from_json(fitted.preprocessing)
    assert isinstance(spec, LetterboxSpec)
    assert (spec.mean, spec.std) == (backbone.mean, backbone.std)
    assert (tmp_path / "run" / "cache" / f"detection-{backbone.name}-256-val.safetensors"
            ).exists()

    fitted.export(tmp_path)
    session = ort.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    served = np.stack([letterbox(data.path(f), spec)[0] for f, _ in data.val])
    onnx_boxes, onnx_scores = session.run(None, {"input": served.astype(np.float32)})
    with torch.inference_mode():
        if head == "fcos":  # what training scored: the head on the cached (FP16) features
            cached = view_features(PrefixEngine(fitted.model.prefix, 256), data, "val", 0,
                                   backbone, 256, tmp_path / "run" / "cache")
            _, scores = fitted.model.dense(fitted.model.from_features(
                *cached.batch(slice(None))))
            # Measured: 2e-5; ImageNet's mean/std in place of 0.5: 0.05.
            assert float(np.abs(onnx_scores - scores.numpy()).max()) < 1e-3
            return
        # Faster R-CNN: FP16 features, or ONNX Runtime's rounding, reorder near-equal
        # proposals; so the model on the served input, its rows matched as a set, as the export
        # check matches them.
        boxes, scores = fitted.model(torch.from_numpy(served))
    unmatched = _unmatched_rows(boxes.numpy() / 256, scores.numpy(), onnx_boxes / 256,
                                onnx_scores)
    assert unmatched <= MAX_UNMATCHED * boxes.shape[1]
