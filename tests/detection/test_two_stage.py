"""The Faster R-CNN head: its loss trains, its batched pooling is ``MultiScaleRoIAlign``'s, its
dense output has the server's layout and survives ONNX export with a dynamic batch (equal
objectness included), and the export check matches its rows as a set."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from modelmint._repository import OPSET
from modelmint._tasks.detection.export import _unmatched_rows
from modelmint._tasks.detection.two_stage import LEVEL_NAMES, FasterRCNNHead

SIZE, WIDTH, CLASSES = 128, 32, 2
STEPS = 30
BOXES = ([16.0, 24.0, 72.0, 88.0], [56.0, 40.0, 120.0, 104.0])


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are too small to gain from threads, and on a busy machine torch's
    spinning threads make every step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Levels(nn.Module):
    """Three strided convolutions standing in for the backbone and FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, WIDTH, s, stride=s) for s in (8, 16, 32))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [torch.relu(conv(x)) for conv in self.convs]


class Exported(nn.Module):
    def __init__(self, levels: Levels, head: FasterRCNNHead) -> None:
        super().__init__()
        self.levels, self.head = levels, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head.dense(self.head(self.levels(x)))


def _images() -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Two images, each a bright box of its own class on a dark, slightly noisy background."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE, generator=gen) * 0.1
    targets = []
    for i, box in enumerate(BOXES):
        x1, y1, x2, y2 = (int(v) for v in box)
        images[i, i, y1:y2, x1:x2] = 1.0
        targets.append({"boxes": torch.tensor([box]), "labels": torch.tensor([i])})
    return images, targets


def _empty() -> dict[str, Tensor]:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


@pytest.mark.parametrize("with_boxes", [True, False])
def test_the_loss_is_finite_and_reaches_every_part(with_boxes: bool) -> None:
    torch.manual_seed(0)
    levels, head = Levels(), FasterRCNNHead(WIDTH, CLASSES, SIZE, convs=2)
    images, targets = _images()
    targets = [targets[0], _empty()] if with_boxes else [_empty(), _empty()]
    loss = head.loss(head(levels(images)), targets)
    assert torch.isfinite(loss)
    loss.backward()  # type: ignore[no-untyped-call]
    parts = {"rpn objectness": head.rpn.head.cls_logits.weight,
             "box head": head.roi_heads.box_head.fc6.weight,
             "classifier": head.roi_heads.box_predictor.cls_score.weight,
             "levels": levels.convs[0].weight}
    if with_boxes:  # box regression is trained on positives only
        parts["rpn boxes"] = head.rpn.head.bbox_pred.weight
        parts["box regressor"] = head.roi_heads.box_predictor.bbox_pred.weight
    for name, weight in parts.items():
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), name
        assert weight.grad.abs().sum() > 0, name


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    head = FasterRCNNHead(WIDTH, CLASSES, SIZE)
    images, targets = _images()
    with torch.no_grad():  # fixed features, as from a frozen backbone: the head alone learns
        features = Levels()(images)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)
    losses = []
    for _ in range(STEPS):
        loss = head.loss(head(features), targets)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    # Sampling makes single steps noisy: compare the first and last few.
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_batched_pooling_is_multiscale_roi_align() -> None:
    size = 768  # large enough for the level rule to use all three levels
    gen = torch.Generator().manual_seed(0)
    head = FasterRCNNHead(WIDTH, CLASSES, size)
    levels = [torch.randn(3, WIDTH, size // s, size // s, generator=gen) for s in (8, 16, 32)]
    sides = torch.exp(torch.empty(3, 40, 2).uniform_(np.log(8), np.log(700), generator=gen))
    corners = torch.rand(3, 40, 2, generator=gen) * (size - sides)
    proposals = torch.cat([corners, corners + sides], 2)
    roi_pool = head.roi_heads.box_roi_pool
    used = roi_pool.map_levels([proposals.reshape(-1, 4)]).unique().tolist()
    assert used == [0, 1, 2]
    expected = roi_pool(dict(zip(LEVEL_NAMES, levels, strict=True)), list(proposals),
                        [(size, size)] * 3)
    torch.testing.assert_close(head.pool(levels, proposals), expected, rtol=0, atol=1e-6)


def _untrained_model() -> Exported:
    torch.manual_seed(0)
    model = Exported(Levels(), FasterRCNNHead(WIDTH, CLASSES, SIZE))
    # torchvision starts objectness near zero for every anchor: spread it so that which
    # proposals are the best does not hang on rounding.
    nn.init.normal_(model.head.rpn.head.cls_logits.weight, std=1.0)
    return model.eval()


def test_dense_rows_are_one_class_each() -> None:
    model = _untrained_model()
    images, _ = _images()
    with torch.no_grad():
        boxes, scores = model(images)
    rows = model.head.proposals * CLASSES
    assert boxes.shape == (2, rows, 4) and scores.shape == (2, rows, CLASSES)
    assert (boxes >= 0).all() and (boxes <= SIZE).all()
    assert (scores >= 0).all() and (scores <= 1).all()
    nonzero = scores != 0
    assert (nonzero.sum(-1) <= 1).all()
    columns = torch.arange(rows) % CLASSES
    assert (scores.argmax(-1)[nonzero.any(-1)] == columns.expand(2, -1)[nonzero.any(-1)]).all()
    # Each proposal's class probabilities with the background's come to at most 1.
    assert (scores.sum(-1).reshape(2, -1, CLASSES).sum(-1) <= 1 + 1e-6).all()


def test_dense_rows_are_roi_heads_detections() -> None:
    """Without its thresholds and NMS, torchvision's own inference on the same proposals gives
    the same boxes, scores and classes as the dense rows."""
    model = _untrained_model()
    head = model.head
    head.roi_heads.nms_thresh, head.roi_heads.detections_per_img = 1.0, 10**6
    images, _ = _images()
    with torch.no_grad():
        outputs = head(model.levels(images))
        boxes, scores = head.dense(outputs)
        proposals = head.propose(outputs)
        pooled = head.roi_heads.box_roi_pool(outputs, list(proposals), [(SIZE, SIZE)] * 2)
        logits, codes = head.roi_heads.box_predictor(head.roi_heads.box_head(pooled))
        expected = head.roi_heads.postprocess_detections(logits, codes, list(proposals),
                                                         [(SIZE, SIZE)] * 2)
    classes = torch.arange(boxes.shape[1]) % CLASSES
    for i, (tv_boxes, tv_scores, tv_labels) in enumerate(zip(*expected, strict=True)):
        score = scores[i].max(-1).values
        # postprocess_detections drops boxes under 1e-2 pixel wide and stable-sorts by score.
        wide = ((boxes[i, :, 2:] - boxes[i, :, :2]) >= 1e-2).all(-1) & (score > 0)
        order = torch.sort(score[wide], descending=True, stable=True).indices
        torch.testing.assert_close(score[wide][order], tv_scores)
        torch.testing.assert_close(boxes[i][wide][order], tv_boxes)
        assert (classes[wide][order] + 1 == tv_labels).all()


@pytest.mark.parametrize("tied", [False, True])
def test_dense_exports_with_a_dynamic_batch(tmp_path: Path, tied: bool) -> None:
    model = _untrained_model()
    if tied:  # every anchor of a shape scores the same, as on a flat letterbox border
        nn.init.zeros_(model.head.rpn.head.cls_logits.weight)
    path = tmp_path / "two_stage.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, SIZE, SIZE),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["input"],
                          output_names=["boxes", "scores"],
                          dynamic_axes={"input": {0: "batch"}, "boxes": {0: "batch"},
                                        "scores": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        images = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
        onnx_boxes, onnx_scores = session.run(None, {"input": images.numpy()})
        with torch.no_grad():
            boxes, scores = model(images)
        assert onnx_boxes.shape == tuple(boxes.shape)
        assert onnx_scores.shape == tuple(scores.shape)
        assert np.abs(onnx_scores - scores.numpy()).max() < 1e-4
        assert np.abs(onnx_boxes - boxes.numpy()).max() < 1e-3 * SIZE


def test_the_export_check_matches_rows_as_a_set() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 1, (2, 60, 4)).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 60, CLASSES)).astype(np.float32)
    order = rng.permutation(boxes.shape[1])
    # Near-equal objectness may come out in another order: the same rows still match.
    assert _unmatched_rows(boxes, scores, boxes[:, order], scores[:, order]) == 0
    shifted = boxes.copy()
    shifted[1, :10] += 0.01  # 10 rows of one image, each 1 % of the input off
    assert _unmatched_rows(boxes, scores, shifted, scores) == 10
