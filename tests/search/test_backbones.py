"""The EfficientNet-Lite0 weights remap: the remapped ImageNet classifier, fed a bee photo with
the backbone's own preprocessing (mean = std = 0.5), must answer "bee" — a wrong remap or
normalisation would not."""

from __future__ import annotations

from pathlib import Path

import torch

from modelmint._data.preprocess import preprocess
from modelmint._tasks.image.backbones import EFFICIENTNET_LITE0
from modelmint._train.backbone import efficientnet_imagenet

IMAGENET_ANT, IMAGENET_BEE = 310, 309


def test_remapped_efficientnet_recognises_a_bee(hymenoptera: Path) -> None:
    net = efficientnet_imagenet()
    bees = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4]
    x = torch.stack([torch.from_numpy(preprocess(p, EFFICIENTNET_LITE0.spec)) for p in bees])
    with torch.inference_mode():
        top5 = net(x).topk(5, dim=1).indices
    hits = sum(IMAGENET_BEE in row.tolist() for row in top5)
    assert hits >= 3, f"ImageNet top-5 of bee photos: {top5.tolist()}"
    assert EFFICIENTNET_LITE0.spec.mean == (0.5, 0.5, 0.5)
    classifier = EFFICIENTNET_LITE0.build(2)
    assert len(list(classifier.tail.children())) == len(EFFICIENTNET_LITE0.tail_units)
