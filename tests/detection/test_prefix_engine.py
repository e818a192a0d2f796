"""The detector's frozen prefix in ONNX Runtime gives eager PyTorch's stride-8 and stride-16
features, so the feature cache does not depend on which engine filled it."""

from __future__ import annotations

import torch

from modelmint._tasks.detection.features import PrefixEngine
from modelmint._tasks.detection.model import Detector


def test_prefix_engine_matches_eager_pytorch() -> None:
    torch.manual_seed(0)
    model = Detector(num_classes=2, size=256)  # ImageNet weights from the weights package
    images = torch.rand(3, 3, 256, 256)
    with torch.inference_mode():
        eager = model.prefix.eval()(images)
        engine = PrefixEngine(model.prefix, 256)(images)
    assert [t.shape for t in engine] == [t.shape for t in eager]
    assert [t.shape[1] for t in engine] == [32, 96]
    for fast, slow in zip(engine, eager, strict=True):
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
