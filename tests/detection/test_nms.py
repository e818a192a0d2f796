"""The server's NumPy non-maximum suppression against torchvision's, on random boxes."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms
from torchvision.ops import nms as torch_nms

from modelmint._data.detection import nms, select_detections


def _boxes(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 300, (n, 2))
    size = rng.uniform(1, 120, (n, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    # Repeated scores exercise the tie order (the lower index first, as torchvision).
    scores = rng.choice(np.linspace(0.05, 1.0, 20), n).astype(np.float32)
    return boxes, scores


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400),
       iou=st.sampled_from([0.3, 0.5, 0.7]), limit=st.sampled_from([None, 1, 7, 100]))
def test_the_kept_boxes_are_torchvisions(seed: int, n: int, iou: float,
                                         limit: int | None) -> None:
    boxes, scores = _boxes(seed, n)
    expected = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    kept = nms(boxes, scores, iou, limit=limit)
    assert kept.tolist() == expected[:limit].tolist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), k=st.sampled_from([5, 100]))
def test_class_aware_selection_is_torchvisions_batched_nms(seed: int, n: int, k: int) -> None:
    boxes, scores = _boxes(seed, n)
    classes = np.random.default_rng(seed + 1).integers(0, 3, n)
    dense = np.zeros((1, n, 3), np.float32)
    dense[0, np.arange(n), classes] = scores
    out_boxes, out_scores, out_classes, count = select_detections(
        boxes[None], dense, score_threshold=0.01, nms_iou=0.5, max_detections=k, k=100)
    expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                           torch.from_numpy(classes), 0.5).numpy()[:k]
    m = int(count[0])
    assert m == expected.size
    np.testing.assert_array_equal(out_boxes[0, :m], boxes[expected])
    np.testing.assert_array_equal(out_classes[0, :m], classes[expected])
    assert (out_classes[0, m:] == -1).all() and (out_scores[0, m:] == 0).all()
