"""A Faster R-CNN head on the FPN levels: torchvision's region proposal network (``RPNHead``,
one anchor size per level, three aspect ratios) and box head (``MultiScaleRoIAlign``,
``TwoMLPHead``, ``FastRCNNPredictor``), trained with torchvision's own matching, sampling and
losses, cut down for CPU training on small inputs (fewer sampled anchors and regions, a narrow
representation).

Training goes through torchvision's list-per-image machinery. Inference cannot: the exported
graph has a dynamic batch, so :meth:`FasterRCNNHead.dense` is written batched, with no per-image
loop and no data-dependent shapes. It keeps a fixed number of proposals per image (the best by
objectness) without the proposal stage's non-maximum suppression: NMS would make the count per
image vary, and duplicate proposals lead to duplicate detections that the server's per-class NMS
removes anyway. Region pooling takes the rows of ``[N * P, 5]`` regions (image index first) that
``MultiScaleRoIAlign``'s level rule gives to each level, pools them there, and scatters them
back, instead of its list-per-image interface.

The dense output has one row per (proposal, class): that class's box and a score vector holding
that class's probability alone, so a class's score never rides on another class's box.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _setup_scales

STRIDES = (8, 16, 32)
LEVEL_NAMES = ("p3", "p4", "p5")
ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # one size per level, 4 strides wide
PROPOSALS = 300  # per image at inference (capped at the anchor count)
# Training proposals: the best per level before the RPN's NMS, then the best after it. Lower
# than torchvision's 2000/2000: our inputs are at most a few hundred pixels wide.
RPN_PRE_NMS, RPN_POST_NMS = 600, 300
RPN_SAMPLES = 256  # anchors sampled per image for the objectness loss
ROI_SAMPLES = 128  # regions per image through the box head in training (torchvision: 512)
REPRESENTATION = 256  # TwoMLPHead width (torchvision: 1024)
# One bilinear sample per bin (torchvision: 2): the exported graph (320 px, FPN 64 wide) runs in
# 30 ms instead of 36 here, and the Mask R-CNN paper finds the count matters little.
POOLED, SAMPLING_RATIO = 7, 1
# FPN's level rule as torchvision applies it: a 224-pixel box pools from level 4.
CANONICAL_SCALE, CANONICAL_LEVEL = 224, 4


def _level_shapes(size: int) -> list[Tensor]:
    """Empty maps shaped as the FPN's levels for an ``S x S`` input (strided convolutions with
    padding round up)."""
    return [torch.zeros(1, 1, -(-size // s), -(-size // s)) for s in STRIDES]


class FasterRCNNHead(nn.Module):
    """Region proposals from the FPN levels, then a box head on the pooled proposals.

    ``forward`` returns the levels (``p3``, ``p4``, ``p5``) and the RPN's ``objectness`` [N, A]
    and ``deltas`` [N, A, 4], in the anchor order of :attr:`anchors`; :meth:`loss` and
    :meth:`dense` both start from that dict.
    """

    anchors: Tensor  # [A, 4] in tensor pixels

    def __init__(self, width: int, num_classes: int, size: int, convs: int = 1, *,
                 proposals: int = PROPOSALS) -> None:
        super().__init__()
        self.size, self.num_classes = size, num_classes
        generator = AnchorGenerator(tuple((4 * s,) for s in STRIDES),
                                    (ANCHOR_RATIOS,) * len(STRIDES))
        # The same numbers in training and evaluation mode, so that a validation loss computed
        # in eval mode means what the training loss means.
        self.rpn: Any = RegionProposalNetwork(
            generator, RPNHead(width, len(ANCHOR_RATIOS), conv_depth=convs),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=RPN_SAMPLES,
            positive_fraction=0.5,
            pre_nms_top_n={"training": RPN_PRE_NMS, "testing": RPN_PRE_NMS},
            post_nms_top_n={"training": RPN_POST_NMS, "testing": RPN_POST_NMS}, nms_thresh=0.7)
        pool = MultiScaleRoIAlign(list(LEVEL_NAMES), POOLED, SAMPLING_RATIO,
                                  canonical_scale=CANONICAL_SCALE,
                                  canonical_level=CANONICAL_LEVEL)
        maps = _level_shapes(size)
        # Set now rather than on the first call, so that the batched pooling of dense() uses
        # the very scales and level mapper of the training path even before any training.
        pool.scales, pool.map_levels = _setup_scales(maps, [(size, size)], CANONICAL_SCALE,
                                                     CANONICAL_LEVEL)
        # Only the training half of RoIHeads is used: inference is dense().
        self.roi_heads: Any = RoIHeads(
            pool, TwoMLPHead(width * POOLED * POOLED, REPRESENTATION),
            FastRCNNPredictor(REPRESENTATION, num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=ROI_SAMPLES,
            positive_fraction=0.25, bbox_reg_weights=None,
            score_thresh=0.0, nms_thresh=0.5, detections_per_img=100)
        anchors = generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]
        self.register_buffer("anchors", anchors, persistent=False)
        self.per_level = [m.shape[2] * m.shape[3] * len(ANCHOR_RATIOS) for m in maps]
        self.proposals = min(proposals, int(anchors.shape[0]))

    def forward(self, levels: list[Tensor]) -> dict[str, Tensor]:
        logits, deltas = self.rpn.head(levels)
        objectness, codes = concat_box_prediction_layers(logits, deltas)
        count = self.anchors.shape[0]
        out = dict(zip(LEVEL_NAMES, levels, strict=True))
        out["objectness"] = objectness.reshape(-1, count)
        out["deltas"] = codes.reshape(-1, count, 4)
        return out

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """RPN objectness and box losses plus the box head's classification and box losses, for
        ``targets`` with boxes in tensor pixels and labels ``0..C-1`` (images may have none)."""
        n = len(targets)
        anchors = [self.anchors] * n
        shapes = [(self.size, self.size)] * n
        objectness = outputs["objectness"].reshape(-1, 1)
        codes = outputs["deltas"].reshape(-1, 4)
        rpn, heads = self.rpn, self.roi_heads
        # As in Faster R-CNN, no gradient flows through the proposals' coordinates.
        decoded = rpn.box_coder.decode(codes.detach(), anchors).view(n, -1, 4)
        proposals, _ = rpn.filter_proposals(decoded, objectness, shapes, self.per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        rpn_losses = rpn.compute_loss(objectness, codes, labels,
                                      rpn.box_coder.encode(matched, anchors))
        # torchvision's class 0 is the background.
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        proposals, _, classes, regression = heads.select_training_samples(proposals, shifted)
        features = heads.box_head(heads.box_roi_pool(outputs, proposals, shapes))
        class_logits, box_codes = heads.box_predictor(features)
        box_losses = fastrcnn_loss(class_logits, box_codes, classes, regression)
        total: Tensor = torch.stack([*rpn_losses, *box_losses]).sum()
        return total

    def pool(self, levels: list[Tensor], proposals: Tensor) -> Tensor:
        """``MultiScaleRoIAlign`` of ``proposals`` [N, P, 4] (tensor pixels) on ``levels``,
        batched: [N * P, width, 7, 7], image by image, proposal by proposal."""
        roi_pool = self.roi_heads.box_roi_pool
        per_image = proposals.shape[1]
        image = torch.arange(proposals.shape[0], dtype=proposals.dtype, device=proposals.device)
        rois = torch.cat([image[:, None, None].expand(-1, per_image, 1), proposals], 2)
        rois = rois.reshape(-1, 5)
        level = roi_pool.map_levels([rois[:, 1:]])
        # Each proposal is pooled on its own level only (index, pool, scatter back): pooling
        # every proposal on every level made the exported graph take 50 ms, not 36.
        out = rois.new_zeros((rois.shape[0], levels[0].shape[1], POOLED, POOLED))
        for index, (feature, scale) in enumerate(zip(levels, roi_pool.scales, strict=True)):
            keep = torch.where(level == index)[0]
            out = out.index_put((keep,), roi_align(feature, rois[keep], POOLED, scale,
                                                   SAMPLING_RATIO))
        return out

    def propose(self, outputs: dict[str, Tensor]) -> Tensor:
        """The inference proposals: [N, P, 4] in tensor pixels, the P anchors of highest
        objectness per image, decoded and clipped to the input, best first."""
        codes = outputs["deltas"]
        n = codes.shape[0]
        boxes = self.rpn.box_coder.decode_single(
            codes.reshape(-1, 4), self.anchors.expand(n, -1, -1).reshape(-1, 4))
        boxes = boxes.reshape(-1, self.anchors.shape[0], 4).clamp(0.0, float(self.size))
        # Equal scores are common (the letterbox's flat border gives many), and which of them
        # topk keeps is unspecified in torch. ONNX's TopK keeps the lower index; a stable sort
        # does the same in torch, so the graph keeps the proposals of the model it is checked
        # against. (The exporter has no stable sort, hence the two spellings.)
        scores = outputs["objectness"]
        if torch.onnx.is_in_onnx_export():
            best = scores.topk(self.proposals, dim=1).indices
        else:
            best = scores.sort(dim=1, descending=True, stable=True).indices[:, :self.proposals]
        out: Tensor = boxes.gather(1, best[:, :, None].expand(-1, -1, 4))
        return out

    def dense(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Boxes [N, P * C, 4] in tensor pixels, clamped to the input, and class probabilities
        [N, P * C, C]: row ``p * C + c`` is proposal ``p``'s box for class ``c`` and has only
        column ``c`` set."""
        classes, count = self.num_classes, self.proposals
        proposals = self.propose(outputs)
        heads = self.roi_heads
        pooled = self.pool([outputs[name] for name in LEVEL_NAMES], proposals)
        class_logits, box_codes = heads.box_predictor(heads.box_head(pooled))
        probs = class_logits.softmax(-1)[:, 1:].reshape(-1, count, classes)
        per_class = heads.box_coder.decode_single(box_codes, proposals.reshape(-1, 4))
        per_class = per_class.reshape(-1, count, classes + 1, 4)[:, :, 1:]
        boxes = per_class.clamp(0.0, float(self.size)).reshape(-1, count * classes, 4)
        eye = torch.eye(classes, dtype=probs.dtype, device=probs.device)
        scores = (probs[..., None] * eye).reshape(-1, count * classes, classes)
        return boxes, scores
