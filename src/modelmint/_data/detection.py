"""Object detection's image geometry and box selection: one implementation for training, the
server and the offline SDK (Pillow and NumPy only, so a serving process never imports torch).

An image is *letterboxed* into the model's square ``S x S`` input: scaled so that its longer
side is ``S``, centred, and padded with a grey border. A :class:`Letterbox` remembers how, so
boxes found in the ``S x S`` tensor map back onto the original image's pixels.

A detector's graph returns dense candidates: ``dense_boxes`` FP32 ``[N, A, 4]`` (x1, y1, x2, y2
in pixels of the ``S x S`` tensor) and ``dense_scores`` FP32 ``[N, A, C]`` (a probability per
class). :func:`select_detections` keeps the best of them: score threshold, class-aware
non-maximum suppression, the top ``max_detections``, padded to ``K`` rows (score 0, class -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .preprocess import ImageSpec, MemoryBudget, _picture, to_tensor

DEFAULT_SIZE = 320
DEFAULT_MAX_DETECTIONS = 100  # K: the rows of every output, padded
PRE_NMS_CANDIDATES = 1000  # per image, the best scores kept before NMS


@dataclass(frozen=True)
class LetterboxSpec(ImageSpec):
    """How an encoded image becomes a detector's FP32 ``[3, S, S]`` input (``S`` is ``crop``;
    ``resize`` equals it), and the defaults of the box selection after the graph."""

    resize: int = DEFAULT_SIZE
    crop: int = DEFAULT_SIZE
    kind: str = "letterbox"
    fill: int = 114  # the grey of the border, in 8-bit pixel values
    max_detections: int = DEFAULT_MAX_DETECTIONS  # K
    score_threshold: float = 0.05
    nms_iou: float = 0.5


@dataclass(frozen=True)
class Letterbox:
    """Where an original ``width x height`` image sits in the ``S x S`` tensor."""

    width: int
    height: int
    scale: float
    left: int
    top: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in tensor pixels → boxes in the original image's pixels, clipped to it."""
        offset = np.asarray([self.left, self.top, self.left, self.top], np.float32)
        out = (np.asarray(boxes, np.float32) - offset) / np.float32(self.scale)
        limit = np.asarray([self.width, self.height, self.width, self.height], np.float32)
        clipped: np.ndarray = np.clip(out, 0.0, limit).astype(np.float32)
        return clipped

    def to_tensor(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in the original image's pixels → boxes in tensor pixels."""
        offset = np.asarray([self.left, self.top, self.left, self.top], np.float32)
        return (np.asarray(boxes, np.float32) * np.float32(self.scale) + offset).astype(
            np.float32)


def letterbox_geometry(width: int, height: int, size: int) -> Letterbox:
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return Letterbox(width, height, scale, (size - new_w) // 2, (size - new_h) // 2)


def letterbox_picture(img: Image.Image, spec: LetterboxSpec) -> tuple[Image.Image, Letterbox]:
    """An 8-bit RGB (or L) picture → the ``S x S`` RGB letterboxed picture and its geometry."""
    size = spec.crop
    box = letterbox_geometry(img.size[0], img.size[1], size)
    new_w, new_h = max(1, round(box.width * box.scale)), max(1, round(box.height * box.scale))
    resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (spec.fill,) * 3)
    canvas.paste(resized if resized.mode == "RGB" else resized.convert("RGB"),
                 (box.left, box.top))
    return canvas, box


def letterbox(source: bytes | str | Path | Image.Image, spec: LetterboxSpec,
              name: str | None = None, budget: MemoryBudget | None = None
              ) -> tuple[np.ndarray, Letterbox]:
    """An encoded image (bytes or path) or a decoded picture → FP32 ``[3, S, S]`` and its
    geometry. Decoding has the classifier's guards (pixel limit, memory budget, EXIF)."""
    if isinstance(source, Image.Image):
        picture, box = letterbox_picture(source, spec)
        return to_tensor(picture, spec), box

    def convert(picture: Image.Image) -> tuple[np.ndarray, Letterbox]:
        boxed, geometry = letterbox_picture(picture, spec)
        return to_tensor(boxed, spec), geometry

    return _picture(source, spec, name, budget, convert)


def letterbox_batch(sources: list[bytes], spec: LetterboxSpec, name: str = "image",
                    budget: MemoryBudget | None = None) -> tuple[np.ndarray, list[Letterbox]]:
    """Encoded images of any sizes → FP32 ``[N, 3, S, S]`` and each one's geometry."""
    out = np.empty((len(sources), 3, spec.crop, spec.crop), np.float32)
    boxes = []
    for i, blob in enumerate(sources):
        out[i], geometry = letterbox(blob, spec, name=f"{name}[{i}]", budget=budget)
        boxes.append(geometry)
    return out, boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [M, 4] with every box of ``b`` [P, 4] → [M, P]."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int | None = None
        ) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first (ties:
    lower index first, as torchvision's ``nms``), stopping after ``limit`` kept boxes.

    Each step compares one kept box with the boxes still alive, so the cost follows the kept
    boxes and ``limit`` bounds it: a weak model leaves every one of its thousand candidates above
    a low threshold, and a served request needs only its ``max_detections``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    ordered = boxes[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(ordered[:, j]) for j in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    alive = np.arange(order.size)
    keep: list[int] = []
    while alive.size and (limit is None or len(keep) < limit):
        best, rest = int(alive[0]), alive[1:]
        keep.append(best)
        w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = w * h
        union = area[best] + area[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        alive = rest[overlap <= iou]
    return order[np.asarray(keep, np.int64)]


def select_detections(dense_boxes: np.ndarray, dense_scores: np.ndarray, *,
                      score_threshold: float, nms_iou: float, max_detections: int,
                      k: int = DEFAULT_MAX_DETECTIONS
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dense candidates → (``boxes`` FP32 [N, K, 4], ``scores`` FP32 [N, K], ``classes`` INT32
    [N, K], ``count`` INT32 [N]): per image, every (box, class) scoring at least
    ``score_threshold``, suppressed per class at ``nms_iou``, the best ``min(max_detections,
    K)`` first; the rows after ``count`` are padding (box 0, score 0, class -1)."""
    n = dense_boxes.shape[0]
    keep_n = max(0, min(int(max_detections), k))
    boxes = np.zeros((n, k, 4), np.float32)
    scores = np.zeros((n, k), np.float32)
    classes = np.full((n, k), -1, np.int32)
    count = np.zeros((n,), np.int32)
    for i in range(n):
        anchor, cls = np.nonzero(dense_scores[i] >= score_threshold)
        if anchor.size == 0 or keep_n == 0:
            continue
        cand_scores = dense_scores[i][anchor, cls].astype(np.float32)
        if cand_scores.size > PRE_NMS_CANDIDATES:
            top = np.argsort(-cand_scores, kind="stable")[:PRE_NMS_CANDIDATES]
            anchor, cls, cand_scores = anchor[top], cls[top], cand_scores[top]
        cand_boxes = dense_boxes[i][anchor].astype(np.float32)
        # Class-aware NMS in one pass: boxes of different classes are moved apart so that
        # they never overlap.
        shift = (cls.astype(np.float32) * (float(np.abs(cand_boxes).max(initial=0.0)) + 1.0))
        kept = nms(cand_boxes + shift[:, None], cand_scores, nms_iou, limit=keep_n)
        m = kept.size
        boxes[i, :m] = cand_boxes[kept]
        scores[i, :m] = cand_scores[kept]
        classes[i, :m] = cls[kept]
        count[i] = m
    return boxes, scores, classes, count
