"""The detector's frozen prefix in ONNX Runtime gives eager PyTorch's stride-8 and stride-16
features, so the feature cache does not depend on which engine filled it."""

from __future__ import annotations

import pytest
import torch

from modelmint._tasks.detection.backbones import DETECTION_BACKBONES
from modelmint._tasks.detection.features import PrefixEngine
from modelmint._tasks.detection.model import Detector


@pytest.mark.parametrize("backbone", sorted(DETECTION_BACKBONES))
def test_prefix_engine_matches_eager_pytorch(backbone: str) -> None:
    torch.manual_seed(0)
    # ImageNet weights from the weights packages
    model = Detector(num_classes=2, size=256, backbone=backbone)
    images = torch.rand(3, 3, 256, 256)
    with torch.inference_mode():
        eager = model.prefix.eval()(images)
        engine = PrefixEngine(model.prefix, 256)(images)
    assert [t.shape for t in engine] == [t.shape for t in eager]
    assert [t.shape[1] for t in engine] == list(DETECTION_BACKBONES[backbone].channels[:2])
    for fast, slow in zip(engine, eager, strict=True):
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
