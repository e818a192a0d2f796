"""The detector: an ImageNet backbone cut in three (:mod:`.backbones`: a frozen prefix whose
stride-8 and stride-16 features are cached, a tail that may be fine-tuned, giving stride 32), a
narrow top-down FPN (1x1 lateral convolutions, upsampled and added) and a torchvision detection
head: FCOS (anchor-free, ``FCOSHead`` + FCOS's own target matching and loss), RetinaNet
(``RetinaNetHead`` with 9 anchors per cell, IoU matching and focal loss), each branch cut to
one or two convolutions, or Faster R-CNN (:mod:`.two_stage`: proposals, then region pooling).

The anchors depend only on the input size ``S``, so they are computed once and kept as a buffer;
the exported graph carries them as constants and returns dense boxes in tensor pixels and a
probability per class for every anchor (for Faster R-CNN: every kept proposal and class).
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead

from .backbones import DETECTION_BACKBONES, MOBILENET
from .two_stage import FasterRCNNHead

HEADS = ("fcos", "retinanet", "faster_rcnn")
STRIDES = (8, 16, 32)
WIDTHS = (32, 64)  # the FPN's channels (FCOSHead's group norm needs multiples of 32)
# Convolutions per head branch: torchvision's default of 4, at full resolution, is most of the
# cost of an epoch on cached features.
HEAD_CONVS = (1, 2)
# RetinaNet: 3 scales x 3 aspect ratios per cell, 4 strides wide at the finest scale.
RETINA_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINA_RATIOS = (0.5, 1.0, 2.0)
FCOS_CENTER_SAMPLING = 1.5


class Prefix(nn.Module):
    """The frozen part: image → (stride-8, stride-16) features, cached per image view."""

    def __init__(self, to_c3: nn.Module, to_c4: nn.Module) -> None:
        super().__init__()
        self.to_c3, self.to_c4 = to_c3, to_c4

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c3 = self.to_c3(x)
        return c3, self.to_c4(c3)


class LightFPN(nn.Module):
    """Top-down feature pyramid without the 3x3 smoothing convolutions: each level is its 1x1
    projection plus the coarser level upsampled (the head's own convolutions smooth it)."""

    def __init__(self, channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        out = [self.lateral[-1](levels[-1])]
        for conv, level in zip(reversed(self.lateral[:-1]), reversed(levels[:-1]), strict=True):
            top = nn.functional.interpolate(out[0], size=level.shape[-2:], mode="nearest")
            out.insert(0, conv(level) + top)
        return out


class _FcosMatcher:
    """FCOS's target assignment and loss, reused as torchvision wrote them: its
    ``compute_loss`` needs only the head and the centre-sampling radius from the model."""

    compute_loss = FCOS.compute_loss

    def __init__(self, head: FCOSHead) -> None:
        self.head = head
        self.center_sampling_radius = FCOS_CENTER_SAMPLING


def _anchors(size: int, head: str) -> tuple[Tensor, list[int]]:
    """Every anchor of an ``S x S`` input, in the head outputs' order, and the count per level."""
    if head == "fcos":  # one point per cell; its box is one stride wide, as in FCOS
        generator = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    else:
        generator = AnchorGenerator(tuple(tuple(4 * s * k for k in RETINA_SCALES)
                                          for s in STRIDES), (RETINA_RATIOS,) * len(STRIDES))
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    maps = [torch.zeros(1, 1, -(-size // s), -(-size // s)) for s in STRIDES]
    anchors = generator(images, maps)[0]
    per_level = [m.shape[2] * m.shape[3] * generator.num_anchors_per_location()[0] for m in maps]
    return anchors, per_level


class Detector(nn.Module):
    """prefix → tail → FPN → head; ``forward`` is the exported graph (``input`` → dense boxes
    and scores), ``from_features`` what training runs on cached prefix features."""

    anchors: Tensor  # [A, 4] in tensor pixels, in the order of the head's outputs
    matcher: Any  # RetinaNet's IoU matcher

    def __init__(self, num_classes: int, size: int, head: str = "fcos", width: int = 64,
                 head_convs: int = 2, pretrained: bool = True,
                 backbone: str = MOBILENET.name) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown detection head {head!r}; expected one of {HEADS}")
        if backbone not in DETECTION_BACKBONES:
            raise ValueError(f"unknown detection backbone {backbone!r}; expected one of "
                             f"{sorted(DETECTION_BACKBONES)}")
        self.backbone = DETECTION_BACKBONES[backbone]
        to_c3, to_c4, self.tail = self.backbone.build(pretrained)
        self.kind, self.size, self.num_classes = head, size, num_classes
        self.prefix = Prefix(to_c3, to_c4)
        self.fpn = LightFPN(self.backbone.channels, width)
        norm = partial(nn.GroupNorm, 16)
        if head == "faster_rcnn":  # its own anchors, proposals and box decoding
            self.head: nn.Module = FasterRCNNHead(width, num_classes, size, head_convs)
            anchors, self.per_level = self.head.anchors, self.head.per_level
        else:
            anchors, self.per_level = _anchors(size, head)
        self.register_buffer("anchors", anchors, persistent=False)
        if head == "fcos":
            self.head = FCOSHead(width, 1, num_classes, num_convs=head_convs)
            self.box_coder: Any = det_utils.BoxLinearCoder(normalize_by_size=True)
        elif head == "retinanet":
            retina = RetinaNetHead(width, len(RETINA_SCALES) * len(RETINA_RATIOS), num_classes,
                                   norm_layer=norm)
            retina.classification_head.conv = retina.classification_head.conv[:head_convs]
            retina.regression_head.conv = retina.regression_head.conv[:head_convs]
            self.head = retina
            self.box_coder = retina.regression_head.box_coder
            self.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
        self.freeze(len(self.tail))

    def freeze(self, frozen_blocks: int) -> None:
        """The prefix and the first ``frozen_blocks`` tail blocks stay as ImageNet trained."""
        self.prefix.requires_grad_(False)
        for i, block in enumerate(self.tail):
            block.requires_grad_(i >= frozen_blocks)
        self.frozen_blocks = frozen_blocks

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        # Batch norm statistics of the backbone stay ImageNet's: batches of a few images
        # would make them noise.
        self.prefix.eval()
        self.tail.eval()
        return self

    def frozen_tail(self, c4: Tensor) -> Tensor:
        """The output of the tail blocks that stay frozen (``c4`` itself when none do)."""
        if not self.frozen_blocks:
            return c4
        with torch.no_grad():
            out: Tensor = self.tail[:self.frozen_blocks](c4)
        return out

    def from_features(self, c3: Tensor, c4: Tensor, mid: Tensor | None = None
                      ) -> dict[str, Tensor]:
        """Head outputs from the prefix features (``mid``: :meth:`frozen_tail` of ``c4``, when
        computed once beforehand)."""
        c5 = self.tail[self.frozen_blocks:](self.frozen_tail(c4) if mid is None else mid)
        out: dict[str, Tensor] = self.head(self.fpn([c3, c4, c5]))
        return out

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """The head's training loss for ``targets`` (boxes in tensor pixels, labels)."""
        if isinstance(self.head, FasterRCNNHead):
            return self.head.loss(outputs, targets)
        anchors = [self.anchors] * len(targets)
        if self.kind == "fcos":
            losses = _FcosMatcher(self.head).compute_loss(targets, outputs, anchors,
                                                          self.per_level)
        else:
            matched = []
            for target in targets:
                if target["boxes"].numel() == 0:
                    matched.append(torch.full((self.anchors.shape[0],), -1, dtype=torch.int64))
                    continue
                iou = torchvision.ops.box_iou(target["boxes"], self.anchors)
                matched.append(self.matcher(iou))
            losses = cast(RetinaNetHead, self.head).compute_loss(targets, outputs, anchors,
                                                                 matched)
        total: Tensor = torch.stack(list(losses.values())).sum()
        return total

    def dense(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Head outputs → boxes [N, A, 4] in tensor pixels and class probabilities [N, A, C]."""
        if isinstance(self.head, FasterRCNNHead):
            boxes, scores = self.head.dense(outputs)
            return boxes.clamp(0.0, float(self.size)), scores
        codes = outputs["bbox_regression"]
        if self.kind == "fcos":
            boxes = self.box_coder.decode(codes, self.anchors)
            scores = torch.sqrt(torch.sigmoid(outputs["cls_logits"])
                                * torch.sigmoid(outputs["bbox_ctrness"]))
        else:
            n = codes.shape[0]
            flat = self.box_coder.decode_single(
                codes.reshape(-1, 4), self.anchors.expand(n, -1, -1).reshape(-1, 4))
            boxes = flat.reshape(n, -1, 4)
            scores = torch.sigmoid(outputs["cls_logits"])
        return boxes.clamp(0.0, float(self.size)), scores

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c3, c4 = self.prefix(x)
        return self.dense(self.from_features(c3, c4))

    def trainable_state(self) -> dict[str, Tensor]:
        """What training changes (the prefix never does): the checkpoint's weights."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("prefix.")}
